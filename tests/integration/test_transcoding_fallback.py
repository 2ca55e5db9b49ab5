"""Transfer-syntax fallback and honest acknowledgement against real Orthancs, DCMTK senders.

The storage Orthanc is configured to accept only uncompressed little endian
(``AcceptedTransferSyntaxes``); the probe takes everything. Each compressed file (pydicom's
bundled ones; with ``../shared`` beside the repository, every compressed file of the public
corpus too) is sent in its own syntax: the storage gets it transcoded, with the same pixels,
and the ledger says "transcoded from"; the probe gets the original bytes.

A SOP class Orthanc refuses (a private one; ``UnknownSopClassAccepted`` is off): the first
instance is acknowledged and its deliveries fail at once with the reason (no retry schedule);
from then on the router knows, and the next instance of that class gets a failure status
(SOP Class not supported, the reason in Error Comment) instead of a success, leaving nothing
in the ledger.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, wait_until
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router
from tests.support.senders import (
    raw_c_store,
    run_storescu,
    store_responses,
    write_storescu_profile,
)

from dde.dicom.status import SUCCESS
from dde.dicom.transcoding import can_transcode
from dde.reports import where_document

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "public"
UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
BUNDLED = ["MR_small_jp2klossless.dcm", "JPEG2000.dcm", "JPGExtended.dcm",
           "SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm",
           "JPEGLSNearLossless_16.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_16bit_2frame.dcm",
           "image_dfl.dcm", "MR_small_bigendian.dcm", "ExplVR_BigEnd.dcm"]
"""Each compressed family, deflated and big endian."""
ORTHANC_FAMILIES = ("Deflated", "Jpeg", "Jpeg2000", "JpegLossless", "Jpip", "Mpeg2", "Rle",
                    "Mpeg4", "H265")
"""Orthanc's groups of transfer syntaxes, each on unless turned off (after
``AcceptedTransferSyntaxes``)."""
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.77.1"


def corpus_files() -> list[Path]:
    """The corpus's clean files in a compressed or non-default syntax the router can
    decode (when the corpus is there)."""
    manifest = CORPUS / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as rows:
        return [CORPUS / row["file"] for row in csv.DictReader(rows)
                if row["broken"] == "no" and row["part10_header"] == "yes"
                and row["transfer_syntax_uid"] not in UNCOMPRESSED
                and row["transfer_syntax_uid"] and can_transcode(row["transfer_syntax_uid"])
                and row["sop_class"] not in ("Color Palette Storage",)
                and not row["sop_class"].startswith("private")]


@dataclass
class Deployment:
    router: InProcessRouter
    storage: RunningOrthanc
    probe: RunningOrthanc


@pytest.fixture
def deployment(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[Deployment]:
    storage = orthanc_factory("ORTHANC1", extra={
        "AcceptedTransferSyntaxes": sorted(UNCOMPRESSED),
        **{f"{family}TransferSyntaxAccepted": False for family in ORTHANC_FAMILIES}})
    probe = orthanc_factory("ORTHANC-PROBE")
    router = start_router(tmp_path / "home", router_settings([storage], probe))
    try:
        yield Deployment(router, storage, probe)
    finally:
        router.stop()


def with_own_uid(source: Path, folder: Path) -> Path:
    """A copy of ``source`` with a SOP Instance UID of its own (pydicom's MR_small files
    share one) and the patient and study identifiers Orthanc requires (two test files have
    none), in its own transfer syntax."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = dcmread(source)
        dataset.SOPInstanceUID = generate_uid()
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not dataset.get(keyword):
                setattr(dataset, keyword, generate_uid())
        if not dataset.get("PatientID"):
            dataset.PatientID = "DDE-TEST-TRANSCODE"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        copy = folder / source.name
        dataset.save_as(copy)
    return copy


def send_as_is(files: list[Path], port: int, folder: Path) -> list[str]:
    """storescu proposing each file's own (SOP class, syntax): sent without conversion;
    the C-STORE statuses it printed."""
    pairs = []
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        pairs.append((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    options = write_storescu_profile(folder / "profile.cfg", pairs)
    return store_responses(run_storescu(files, port, ROUTER_AET, *options))


def send_one_as_is(path: Path, port: int, folder: Path) -> bool:
    """Whether the router acknowledged ``path`` sent in its own syntax: by storescu, or,
    for a syntax newer than DCMTK 3.6.7 (HTJ2K, deflated image frames), its bytes raw."""
    if send_as_is([path], port, folder) == ["Success"]:
        return True
    meta = dcmread(path, stop_before_pixels=True).file_meta
    outcome = raw_c_store(path, port, ROUTER_AET, str(meta.MediaStorageSOPClassUID),
                          str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID))
    return outcome.status == SUCCESS


def pixels(data: bytes | Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data) if isinstance(data, bytes) else data).pixel_array


def stored_syntax(orthanc: RunningOrthanc, uid: str) -> str:
    with httpx.Client(base_url=orthanc.url, trust_env=False, timeout=10) as client:
        answer = client.get(f"/instances/{orthanc.instance_id(uid)}/metadata/TransferSyntax")
    return answer.text.strip()


def test_every_compressed_syntax_reaches_a_pacs_that_takes_only_uncompressed(
        deployment: Deployment, tmp_path: Path) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    files = [with_own_uid(path, copies) for path in
             [Path(get_testdata_file(name)) for name in BUNDLED] + corpus_files()]
    for path in files:
        assert send_one_as_is(path, deployment.router.port, tmp_path), path.name
    deployment.router.wait_idle(90)

    ledger = deployment.router.ledger
    report = []
    for path in files:
        original = dcmread(path, stop_before_pixels=True)
        uid, syntax = str(original.SOPInstanceUID), str(original.file_meta.TransferSyntaxUID)
        document = where_document(ledger.operators.where(uid))
        by_endpoint = {d["endpoint"]: d for d in document["deliveries"]}
        storage, probe = by_endpoint["ORTHANC1"], by_endpoint["ORTHANC-PROBE"]
        assert storage["state"] == "delivered", (path.name, storage)
        assert storage["transcoded_from"] == syntax, path.name
        assert storage["transfer_syntax_uid"] in UNCOMPRESSED
        assert stored_syntax(deployment.storage, uid) == storage["transfer_syntax_uid"]
        if "PixelData" in dcmread(path):
            kept = deployment.storage.file_bytes(uid)
            try:
                assert np.array_equal(pixels(kept), pixels(path)), path.name
            except NotImplementedError:  # a syntax newer than pydicom: the unit tests
                stored = dcmread(io.BytesIO(kept))  # check its values; here its shape
                assert pixels(kept).shape[0] == int(stored.NumberOfFrames), path.name
        report.append(f"{path.name}: {syntax} -> {storage['transfer_syntax_uid']}; probe: "
                      + (f"transcoded to {probe['transfer_syntax_uid']}"
                         if probe["transcoded_from"] else "as is"))
        if probe["state"] == "delivered" and probe["transcoded_from"] is None:
            assert stored_syntax(deployment.probe, uid) == syntax  # the original bytes
    print("\n" + "\n".join(report))


def private_instance(path: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = PRIVATE_SOP_CLASS, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "DDE-TEST-PRIVATE", "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_sop_class_the_pacs_refuses_is_refused_to_the_sender_once_known(
        orthanc_factory: OrthancFactory, tmp_path: Path) -> None:
    storage = orthanc_factory("ORTHANC1", extra={"UnknownSopClassAccepted": False})
    probe = orthanc_factory("ORTHANC-PROBE")  # the stack's: takes unknown SOP classes
    router = start_router(tmp_path / "home", router_settings([storage], probe))
    try:
        check_refusal_once_known(router, tmp_path)
    finally:
        router.stop()


def check_refusal_once_known(router: InProcessRouter, tmp_path: Path) -> None:
    first = private_instance(tmp_path / "first.dcm")
    assert send_as_is([first], router.port, tmp_path) == ["Success"]
    router.wait_idle(30)
    uid = str(dcmread(first).SOPInstanceUID)
    deliveries = {d["endpoint"]: d for d in
                  where_document(router.ledger.operators.where(uid))["deliveries"]}
    refused = deliveries["ORTHANC1"]  # at once, not after the retry schedule
    assert refused["state"] == "failed" and refused["attempts"] == 1, refused
    assert "SOP class refused" in refused["last_error"], refused
    assert deliveries["ORTHANC-PROBE"]["state"] == "delivered"

    # Receivers read what the destinations accept every 2 s: within that, instances of
    # the class are still acknowledged (and fail like the first); then they are refused.
    def next_refused() -> str | None:
        """The storescu -d output (the whole response, Error Comment included) of a new
        instance of the class, if the router refused it (and kept nothing of it)."""
        instance = private_instance(tmp_path / f"{generate_uid()}.dcm")
        options = write_storescu_profile(tmp_path / "next.cfg",
                                         [(PRIVATE_SOP_CLASS, ExplicitVRLittleEndian)])
        before = router.ledger.diagnostics.count("instances")
        result = run_storescu([instance], router.port, ROUTER_AET, "-d", *options)
        if router.ledger.diagnostics.count("instances") > before:
            return None  # acknowledged: not known yet
        return result.stdout + result.stderr

    output = wait_until(next_refused, 10, "an instance of the refused class refused")
    assert "0x0122" in output or "SOPClassNotSupported" in output, output
    assert "undeliverable: ORTHANC1 refuses" in output, output  # the Error Comment
    with httpx.Client(trust_env=False, timeout=10) as client:
        metrics = client.get(f"{router.web_url}/metrics").text
    assert 'reason="undeliverable"' in metrics
