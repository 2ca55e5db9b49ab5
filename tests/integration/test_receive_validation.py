"""What the receiver accepts, in which transfer syntax, and how it says no.

- ``storescu +C -x?`` (one context proposing several transfer syntaxes): the router accepts
  explicit VR little endian, else implicit, as Orthanc does, so storescu never has to produce
  a syntax it cannot (JPEG lossless from an uncompressed file) and never sends Deflated;
- a context proposing only unknown transfer syntaxes is rejected;
- every failure status carries the reason in Error Comment (0000,0902) (DCMTK 3.6.7's
  storescu prints it as the response's "Status Detail" at ``-d``; ``-v`` shows the status
  only); a C-STORE request without Affected SOP Instance UID gets a failure status too;
- odd-length fragments and short native pixel data are refused, a complete dataset without
  Pixel Data is accepted and delivered to Orthanc.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_charset_files
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from tests.support.datagen import make_instance
from tests.support.orthanc import RunningOrthanc, start_orthanc
from tests.support.pixelkit import JPEG_BASELINE, odd_fragment_file, short_pixel_data_file
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router
from tests.support.senders import (
    keep_responses_for_the_waiting_call,
    run_storescu,
    store_responses,
    write_storescu_profile,
)

from dde.dicom import status as dimse

pytestmark = pytest.mark.integration

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNKNOWN = "1.2.3.4.99"

# storescu's proposal options (``storescu --help``) that propose uncompressed syntaxes too, so
# that with ``+C`` it can send an uncompressed file whatever the router accepts.
PROPOSALS = ["-x=", "-xe", "-xb", "-xi", "-xs", "-xy", "-xx", "-xv", "-xw", "-xt", "-xu",
             "-xr", "-xd"]


@dataclass
class Receiving:
    router: InProcessRouter
    storage: RunningOrthanc
    scratch: Path


@pytest.fixture(scope="module")
def receiving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiving]:
    base = tmp_path_factory.mktemp("receive-validation")
    storage = start_orthanc(base / "orthanc", "ORTHANC1")
    router: InProcessRouter | None = None
    try:
        router = start_router(base / "router-home", router_settings([storage], None))
        scratch = base / "scratch"
        scratch.mkdir()
        yield Receiving(router, storage, scratch)
    finally:
        if router is not None:
            router.stop()
        storage.kill()


def plain_file(folder: Path) -> tuple[Path, str]:
    """A generated uncompressed (explicit VR little endian) CT and its SOP Instance UID."""
    ds = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                       rows=16, columns=16)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def stored_syntax(part10: bytes) -> str:
    stream = io.BytesIO(part10)
    read_preamble(stream, False)
    return str(_read_file_meta_info(stream).TransferSyntaxUID)


def ledger_syntax(router: InProcessRouter, uid: str) -> str | None:
    rows = [row for row in router.ledger.diagnostics.instances() if row.sop_instance_uid == uid]
    return rows[0].transfer_syntax_uid if rows else None


# -- (a) one context, several transfer syntaxes ---------------------------------------------


@pytest.mark.parametrize("proposal", PROPOSALS)
def test_storescu_combined_proposal_is_accepted_in_an_uncompressed_little_endian_syntax(
    receiving: Receiving, proposal: str,
) -> None:
    path, uid = plain_file(receiving.scratch)

    result = run_storescu([path], receiving.router.port, ROUTER_AET, "+C", proposal)

    output = result.stdout + result.stderr
    assert store_responses(result) == ["Success"], output[-3000:]
    assert result.returncode == 0, output[-3000:]
    expected = IMPLICIT if proposal == "-xi" else EXPLICIT
    assert ledger_syntax(receiving.router, uid) == expected
    receiving.storage.wait_for_sop_instance_uids([uid], timeout=30)
    assert stored_syntax(receiving.storage.file_bytes(uid)) in (EXPLICIT, IMPLICIT)


# -- (b) unknown transfer syntaxes ----------------------------------------------------------


def negotiate(port: int, syntaxes: list[str]) -> tuple[list[Any], list[Any]]:
    """Propose CT Image Storage in ``syntaxes`` (and Verification); return the accepted and
    rejected contexts of CT Image Storage."""
    ae = AE(ae_title="RAW_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title=ROUTER_AET,
                         contexts=[build_context(CTImageStorage, syntaxes),
                                   build_context(Verification)])
    assert assoc.is_established
    try:
        accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage]
        rejected = [cx for cx in assoc.rejected_contexts if cx.abstract_syntax == CTImageStorage]
        assert any(cx.abstract_syntax == Verification for cx in assoc.accepted_contexts)
    finally:
        assoc.release()
    return accepted, rejected


def test_a_context_proposing_only_an_unknown_transfer_syntax_is_rejected(
    receiving: Receiving,
) -> None:
    accepted, rejected = negotiate(receiving.router.port, [UNKNOWN])

    assert accepted == []
    assert [cx.result for cx in rejected] == [0x04]  # transfer syntaxes not supported


def test_an_unknown_transfer_syntax_beside_known_ones_is_passed_over(
    receiving: Receiving,
) -> None:
    accepted, _ = negotiate(receiving.router.port, [UNKNOWN, DEFLATED, IMPLICIT])

    assert [cx.transfer_syntax[0] for cx in accepted] == [IMPLICIT]


def test_a_compressed_only_proposal_is_still_accepted(receiving: Receiving) -> None:
    accepted, _ = negotiate(receiving.router.port, [JPEG_BASELINE])

    assert [cx.transfer_syntax[0] for cx in accepted] == [JPEG_BASELINE]


# -- (c) the reason, in Error Comment -------------------------------------------------------


def error_comments(output: str) -> list[str]:
    """The Error Comments storescu ``-d`` printed in its responses' Status Detail, e.g.
    ``D: (0000,0902) LO [pixel data is shorter …]  #  58, 1 ErrorComment``."""
    return [line.split("[", 1)[1].rsplit("]", 1)[0] for line in output.splitlines()
            if "(0000,0902)" in line and "[" in line]


def test_a_failure_status_carries_its_reason_in_error_comment(receiving: Receiving) -> None:
    path = short_pixel_data_file(receiving.scratch / "short.dcm")

    result = run_storescu([path], receiving.router.port, ROUTER_AET, "-d")

    output = result.stdout + result.stderr
    assert "0xc000: Error: Cannot understand" in output, output[-3000:]
    comments = error_comments(output)
    assert comments and "shorter than its geometry" in comments[0], output[-3000:]
    assert "DDE-TEST" not in output and "Test^Patient" not in output  # no patient data


def send_without_instance_uid(port: int, path: Path) -> Any:
    """C-STORE ``path`` with a command that lacks Affected SOP Instance UID."""
    ae = AE(ae_title="RAW_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title=ROUTER_AET,
                         contexts=[build_context(CTImageStorage, [EXPLICIT])])
    assert assoc.is_established
    keep_responses_for_the_waiting_call(assoc)
    # pynetdicom's own logging of the sent request would fail on the missing UID
    assoc.unbind(evt.EVT_DIMSE_SENT, standard_dimse_sent_handler)
    send = assoc.dimse.send_msg

    def without_uid(primitive: Any, context_id: int) -> None:
        if isinstance(primitive, C_STORE):
            primitive.AffectedSOPInstanceUID = None
        send(primitive, context_id)

    assoc.dimse.send_msg = without_uid  # type: ignore[method-assign]
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


@pytest.mark.parametrize("processes", [1, 0], ids=["streamed", "in-memory"])
def test_a_c_store_without_affected_sop_instance_uid_gets_a_failure_status(
    receiving: Receiving, tmp_path: Path, processes: int, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = start_router(tmp_path / "router-home", router_settings(
        [receiving.storage], None, receiver={"processes": processes}))
    try:
        path, _ = plain_file(receiving.scratch)
        capfd.readouterr()

        response = send_without_instance_uid(router.port, path)

        assert response is not None and "Status" in response, "no C-STORE response"
        assert int(response.Status) == dimse.CANNOT_UNDERSTAND
        assert "Affected SOP Instance" in str(response.ErrorComment)
        assert router.ledger.diagnostics.max_instance_id() == 0
    finally:
        router.stop()
    logged = capfd.readouterr().err + caplog.text  # receiver processes log to stderr
    assert "Traceback" not in logged, logged[-3000:]
    assert "no Affected SOP Instance UID" in logged


# -- (d) pixel data -------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["odd fragment", "short pixel data"])
def test_pixel_data_no_pacs_can_read_is_refused(receiving: Receiving, broken: str) -> None:
    if broken == "odd fragment":
        path, syntax = odd_fragment_file(receiving.scratch / "odd.dcm"), JPEG_BASELINE
    else:
        path, syntax = short_pixel_data_file(receiving.scratch / "short-raw.dcm"), EXPLICIT
    before = receiving.router.ledger.diagnostics.max_instance_id()
    if broken == "odd fragment":
        # storescu pads an odd item when it reads the file (and then sends a valid dataset):
        # the bytes go as they are with pynetdicom.
        status, comment = raw_send(receiving, path, syntax)
        assert status == dimse.CANNOT_UNDERSTAND
        assert comment.startswith("odd-length pixel data fragment"), comment
    else:
        profile = write_storescu_profile(receiving.scratch / "pixel.cfg",
                                         [(CTImageStorage, syntax)])
        result = run_storescu([path], receiving.router.port, ROUTER_AET, "-d", *profile)
        output = result.stdout + result.stderr
        assert "0xc000: Error: Cannot understand" in output, output[-3000:]
        assert any("shorter than its geometry" in comment
                   for comment in error_comments(output)), output[-3000:]
    assert receiving.router.ledger.diagnostics.max_instance_id() == before


def raw_send(receiving: Receiving, path: Path, syntax: str) -> tuple[int, str]:
    """C-STORE the file's bytes as they are; (status, Error Comment)."""
    from pydicom import dcmread

    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    ae = AE(ae_title="RAW_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", receiving.router.port, ae_title=ROUTER_AET,
                         contexts=[build_context(CTImageStorage, [syntax])])
    assert assoc.is_established and assoc.accepted_contexts
    keep_responses_for_the_waiting_call(assoc)
    try:
        response = assoc.send_c_store(path)  # the router's install() sends files chunked
    finally:
        assoc.release()
    assert response is not None and "Status" in response, f"no response for {uid}"
    return int(response.Status), str(response.get("ErrorComment", ""))


@pytest.mark.parametrize("name", ["chrJapMulti.dcm", "chrKoreanMulti.dcm"])
def test_a_complete_dataset_without_pixel_data_is_accepted_and_delivered(
    receiving: Receiving, name: str,
) -> None:
    path = Path(get_charset_files(name)[0])
    from pydicom import dcmread

    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)

    result = run_storescu([path], receiving.router.port, ROUTER_AET)

    output = result.stdout + result.stderr
    assert store_responses(result) == ["Success"], output[-3000:]
    receiving.storage.wait_for_sop_instance_uids([uid], timeout=30)
