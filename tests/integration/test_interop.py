"""Interoperability with real DCMTK senders and real Orthanc: transfer syntaxes, C-ECHO,
unknown SOP classes, truncated datasets and the ``orthanc-rest`` endpoint kind.

Every check compares what Orthanc stored with what was sent, byte for byte after the file
meta (Orthanc writes its own meta), and synchronises by polling, never by sleeping.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, generate_uid
from tests.support.datagen import make_instance, write_series
from tests.support.fixtures import OrthancFactory, ReferenceStack
from tests.support.orthanc import ECHOSCU, RunningOrthanc
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router
from tests.support.senders import (
    file_pair,
    raw_c_store,
    run_storescu,
    store_responses,
    write_storescu_profile,
)

from dde.dicom import status as dimse

pytestmark = pytest.mark.integration

PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.9999.1"


def dataset_bytes(part10: bytes) -> bytes:
    """The encoded dataset after the file meta group."""
    stream = io.BytesIO(part10)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return part10[stream.tell():]


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"pydicom no longer bundles {name}")
    return Path(str(path))


def sop_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def holder_of(stack_storages: list[RunningOrthanc], uid: str) -> RunningOrthanc:
    holders = [o for o in stack_storages if uid in o.sop_instance_uids()]
    assert len(holders) == 1, f"{uid} is held by {[o.name for o in holders]}"
    return holders[0]


def deliveries(router: InProcessRouter, uid: str) -> list[tuple[str, str, int, str | None]]:
    rows = router.ledger.diagnostics.deliveries(sop_instance_uid=uid)
    return sorted(((d.endpoint, d.state, d.attempts, d.last_error) for d in rows),
                  key=lambda d: d[0])


def instance_count(router: InProcessRouter) -> int:
    return router.ledger.diagnostics.count("instances")


def assert_sent_successfully(result: subprocess.CompletedProcess[str], count: int = 1) -> None:
    output = result.stdout + result.stderr
    assert store_responses(result) == ["Success"] * count, output[-3000:]
    assert result.returncode == 0, output[-3000:]


# -- transfer syntaxes ---------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    option: str
    transfer_syntax: str


COMPRESSED_CASES = [
    Case("SC_rgb_jpeg_gdcm.dcm", "-xs", "1.2.840.10008.1.2.4.70"),  # JPEG Lossless SV1
    Case("SC_rgb_jpeg_dcmtk.dcm", "-xy", "1.2.840.10008.1.2.4.50"),  # JPEG baseline
    Case("MR_small_RLE.dcm", "-xr", "1.2.840.10008.1.2.5"),  # RLE lossless
    Case("MR_small_jp2klossless.dcm", "-xv", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    Case("JPEG2000.dcm", "-xw", "1.2.840.10008.1.2.4.91"),  # JPEG 2000
    Case("MR_small_implicit.dcm", "-xi", "1.2.840.10008.1.2"),  # implicit VR only
]


@pytest.fixture
def direct(orthanc_factory: OrthancFactory) -> RunningOrthanc:
    """An Orthanc that storescu sends to directly, without the router: the reference."""
    return orthanc_factory("DIRECT")


def sent_directly(direct: RunningOrthanc, paths: list[Path], *options: str) -> dict[str, bytes]:
    """What storescu sends for each file, as stored by an Orthanc without the router.

    DCMTK does not send every file's bytes verbatim: it drops trailing padding (FFFC,FFFC)
    and writes encapsulated Pixel Data as OB where a file says OW. The router must forward
    exactly what it was sent, so that is the reference, not the file.
    """
    assert_sent_successfully(run_storescu(paths, direct.dicom_port, direct.aet, *options),
                             len(paths))
    expected = {}
    for path in paths:
        uid = sop_instance_uid(path)
        expected[uid] = dataset_bytes(direct.file_bytes(uid))
        # and the compressed pixel data itself is the file's: nobody transcoded
        assert dcmread(io.BytesIO(direct.file_bytes(uid))).PixelData == dcmread(path).PixelData
    return expected


@pytest.mark.parametrize("case", COMPRESSED_CASES, ids=lambda c: f"{c.option}-{c.name}")
def test_file_sent_with_the_matching_proposal_arrives_byte_identical(
    reference_stack: ReferenceStack, direct: RunningOrthanc, case: Case
) -> None:
    path = bundled(case.name)
    assert file_pair(path)[1] == case.transfer_syntax
    uid = sop_instance_uid(path)
    expected = sent_directly(direct, [path], case.option)[uid]

    result = run_storescu([path], reference_stack.router.port, ROUTER_AET, case.option)
    assert_sent_successfully(result)
    reference_stack.router.wait_idle()

    recorded = [r.transfer_syntax_uid for r in reference_stack.router.ledger.operators.where(uid)]
    assert recorded == [case.transfer_syntax], "storescu converted it, or it was not recorded"
    holder = holder_of(reference_stack.storages, uid)
    assert [(e, s, a) for e, s, a, _ in deliveries(reference_stack.router, uid)] == [
        (name, "delivered", 1) for name in sorted([holder.name, "ORTHANC-PROBE"])
    ]
    assert dataset_bytes(holder.file_bytes(uid)) == expected
    assert dataset_bytes(reference_stack.probe.file_bytes(uid)) == expected


def test_the_same_files_in_one_association_with_a_profile_of_every_pair(
    reference_stack: ReferenceStack, direct: RunningOrthanc, tmp_path: Path
) -> None:
    """storescu's ``-xf`` profile stands in for DCMTK 3.6.8's ``+xa`` (propose all)."""
    paths = []
    for case in COMPRESSED_CASES:  # three of them share one SOP Instance UID: give new ones
        ds = dcmread(bundled(case.name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(tmp_path / case.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    options = write_storescu_profile(tmp_path / "all.cfg", [file_pair(p) for p in paths])
    expected = sent_directly(direct, paths, *options)
    result = run_storescu(paths, reference_stack.router.port, ROUTER_AET, *options)
    assert_sent_successfully(result, len(paths))
    reference_stack.router.wait_idle()
    for path in paths:
        uid = sop_instance_uid(path)
        holder = holder_of(reference_stack.storages, uid)
        assert dataset_bytes(holder.file_bytes(uid)) == expected[uid], path.name
        assert dataset_bytes(reference_stack.probe.file_bytes(uid)) == expected[uid], path.name


@dataclass
class RetainingStack:
    storages: list[RunningOrthanc]
    probe: RunningOrthanc
    router: InProcessRouter


@pytest.fixture
def retaining_stack(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[RetainingStack]:
    """The reference stack, but the router keeps its spool files after delivery."""
    storages = [orthanc_factory("ORTHANC1"), orthanc_factory("ORTHANC2")]
    probe = orthanc_factory("ORTHANC-PROBE")
    router = start_router(tmp_path / "router-home", router_settings(
        storages, probe, spool={"retention_seconds": 3600.0}))
    try:
        yield RetainingStack(storages, probe, router)
    finally:
        router.stop()


def test_implicit_vr_file_sent_with_default_options_is_forwarded_as_received(
    retaining_stack: RetainingStack,
) -> None:
    """By default storescu proposes explicit VR first and re-encodes the implicit VR file;
    the router must deliver exactly the bytes it received, in the syntax it received."""
    path = bundled("MR_small_implicit.dcm")
    uid = sop_instance_uid(path)
    result = run_storescu([path], retaining_stack.router.port, ROUTER_AET)
    assert_sent_successfully(result)
    retaining_stack.router.wait_idle()

    rows = retaining_stack.router.ledger.operators.where(uid)
    assert len(rows) == 1
    syntax, spool_path = rows[0].transfer_syntax_uid, rows[0].spool_path
    assert spool_path is not None, "spool file released despite retention"
    received = dataset_bytes(retaining_stack.router.app.spool.path_of(spool_path).read_bytes())
    holder = holder_of(retaining_stack.storages, uid)
    assert dataset_bytes(holder.file_bytes(uid)) == received
    assert dataset_bytes(retaining_stack.probe.file_bytes(uid)) == received
    # Whatever syntax storescu chose, the content is the file's.
    stored = dcmread(io.BytesIO(holder.file_bytes(uid)))
    assert str(stored.file_meta.TransferSyntaxUID) == syntax
    assert stored == dcmread(path)
    assert [(e, s, a) for e, s, a, _ in deliveries(retaining_stack.router, uid)] == [
        (n, "delivered", 1) for n in sorted([holder.name, "ORTHANC-PROBE"])]


# -- C-ECHO --------------------------------------------------------------------------------

def test_c_echo_from_dcmtk_echoscu(reference_stack: ReferenceStack) -> None:
    result = subprocess.run(
        [ECHOSCU, "-v", "-aet", "TEST_SCU", "-aec", ROUTER_AET, "127.0.0.1",
         str(reference_stack.router.port)],
        capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Echo Response (Success)" in output, output


# -- unknown SOP classes -------------------------------------------------------------------

def test_private_sop_class_is_acknowledged_and_then_delivered_or_visibly_failed(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    ds = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(PRIVATE_SOP_CLASS)
    path = tmp_path / "private.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = str(ds.SOPInstanceUID)

    # storescu proposes only SOP classes it knows; a profile makes it propose this one.
    options = write_storescu_profile(tmp_path / "private.cfg", [file_pair(path)])
    result = run_storescu([path], reference_stack.router.port, ROUTER_AET, *options)
    assert_sent_successfully(result)
    reference_stack.router.wait_idle()

    rows = deliveries(reference_stack.router, uid)
    assert len(rows) == 2, rows
    original = dataset_bytes(path.read_bytes())
    by_name = {o.name: o for o in [*reference_stack.storages, reference_stack.probe]}
    for endpoint, state, _attempts, last_error in rows:
        assert state in ("delivered", "failed"), rows
        if state == "failed":
            assert last_error, f"{endpoint} failed without a reason"
        else:
            assert dataset_bytes(by_name[endpoint].file_bytes(uid)) == original


# -- truncated datasets --------------------------------------------------------------------

def cut_files(folder: Path) -> tuple[Path, Path, Path]:
    """A whole generated file, the same cut in the middle of its pixel data, and cut just
    before its pixel data element (an element boundary); the meta stays valid."""
    whole = write_series(folder, 1, prefix="whole")[0]
    data = whole.read_bytes()
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00")
    assert pixel_data > 0
    mid = folder / "cut_mid_pixels.dcm"
    mid.write_bytes(data[: pixel_data + 12 + (len(data) - pixel_data - 12) // 2])
    before = folder / "cut_before_pixels.dcm"
    before.write_bytes(data[:pixel_data])
    return whole, mid, before


def wait_for_sentinel(stack: ReferenceStack, folder: Path) -> str:
    """Send one good instance and wait until it is delivered: everything sent before it has
    been answered and settled by then."""
    sentinel = write_series(folder / "sentinel", 1, prefix="ok")[0]
    assert_sent_successfully(run_storescu([sentinel], stack.router.port, ROUTER_AET))
    uid = sop_instance_uid(sentinel)
    stack.router.wait_idle()
    stack.probe.wait_for_sop_instance_uids([uid])
    return uid


def assert_only_sentinel_recorded(stack: ReferenceStack, sentinel: str) -> None:
    recorded = [i.sop_instance_uid for i in stack.router.ledger.diagnostics.instances()]
    assert recorded == [sentinel]
    for orthanc in [*stack.storages, stack.probe]:
        assert orthanc.sop_instance_uids() <= {sentinel}, orthanc.name


def test_truncated_files_sent_with_storescu_fail_and_leave_no_trace(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    _, mid, _ = cut_files(tmp_path / "cut")
    port = reference_stack.router.port
    for path in (bundled("MR_truncated.dcm"), mid):
        result = run_storescu([path], port, ROUTER_AET)
        responses = store_responses(result)
        # storescu itself cannot read a file cut inside an element, so it never sends it
        assert result.returncode != 0, (path.name, result.stdout + result.stderr)
        assert "Success" not in responses, (path.name, responses)
    sentinel = wait_for_sentinel(reference_stack, tmp_path)
    assert_only_sentinel_recorded(reference_stack, sentinel)


def test_a_file_cut_before_its_pixel_data_is_stored_as_the_pacs_stores_it(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    """Cut at an element boundary, the dataset is structurally complete without Pixel Data:
    Orthanc stores it, so the router is not stricter (it refused it once)."""
    _, _, before = cut_files(tmp_path / "cut")
    probe = reference_stack.probe
    direct = run_storescu([before], probe.dicom_port, probe.aet)
    assert store_responses(direct) == ["Success"], direct.stdout + direct.stderr

    assert_sent_successfully(run_storescu([before], reference_stack.router.port, ROUTER_AET))

    assert instance_count(reference_stack.router) == 1
    reference_stack.router.wait_idle()


def test_truncated_dataset_bytes_reaching_the_router_are_refused(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    """Bytes storescu would not send, shipped raw: the router's own check must refuse them."""
    _, mid, _ = cut_files(tmp_path / "cut")
    port = reference_stack.router.port
    for path in (bundled("MR_truncated.dcm"), mid):
        meta = dcmread(path, stop_before_pixels=True)
        outcome = raw_c_store(path, port, ROUTER_AET, str(meta.SOPClassUID),
                              str(meta.SOPInstanceUID), str(meta.file_meta.TransferSyntaxUID))
        assert outcome.sent, (path.name, outcome)
        assert outcome.status == dimse.CANNOT_UNDERSTAND, (path.name, outcome)
    assert instance_count(reference_stack.router) == 0
    sentinel = wait_for_sentinel(reference_stack, tmp_path)
    assert_only_sentinel_recorded(reference_stack, sentinel)


# -- orthanc-rest endpoints ----------------------------------------------------------------

def test_orthanc_rest_endpoint_receives_instances_by_post(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    orthanc = orthanc_factory("REST-PACS")
    settings = router_settings(
        [], None,
        endpoints=[{"name": "REST1", "kind": "orthanc-rest", "aet": "UNUSED",
                    "url": orthanc.url, "groups": ["storage"]}],
        routing={"mirror": []},
    )
    router = start_router(tmp_path / "router-home", settings)
    try:
        files = write_series(tmp_path / "series", 3)
        compressed = bundled("SC_rgb_jpeg_gdcm.dcm")
        assert_sent_successfully(run_storescu(files, router.port, ROUTER_AET), 3)
        assert_sent_successfully(run_storescu([compressed], router.port, ROUTER_AET, "-xs"))
        router.wait_idle()
        for path in [*files, compressed]:
            uid = sop_instance_uid(path)
            assert deliveries(router, uid) == [("REST1", "delivered", 1, None)], path.name
            assert dataset_bytes(orthanc.file_bytes(uid)) == dataset_bytes(path.read_bytes())
        assert orthanc.count() == 4
        # Orthanc saw an HTTP upload, not a C-STORE: no DICOM association was involved.
        instance = orthanc.instance_id(sop_instance_uid(compressed))
        origin = orthanc.get_json(f"/instances/{instance}/metadata?expand")
        assert origin.get("Origin") == "RestApi", origin
    finally:
        router.stop()
