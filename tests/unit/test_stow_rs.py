"""STOW-RS in (``POST /dicom-web/studies[/{uid}]``): Part-10 parts through the durable
receive path, the Store Instances Response Module as application/dicom+json with the
standard's 200 / 202 / 409, JSON errors (401, 400, 413, 415) that store nothing."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage, generate_uid
from tests.support.unitkit import bundled_file, run_coroutine, split_part10
from tests.support.webkit import (
    AUTH,
    ROUTER_AET,
    WebKit,
    dicom_bytes,
    make_webkit,
    metric_value,
)

from dde.config import WebSettings
from dde.dicom import status as dimse
from dde.synthetic import FRAME_BYTES, FRAME_SIDE, make_header
from dde.web import stow

BOUNDARY = "dde-stow-test"
DICOM_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
STUDIES = "/dicom-web/studies"


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


def related(parts: list[bytes], part_type: str = "application/dicom", preamble: bytes = b"",
            epilogue: bytes = b"") -> bytes:
    delimiter = b"\r\n--" + BOUNDARY.encode()
    body = preamble + b"".join(
        delimiter + f"\r\nContent-Type: {part_type}\r\n\r\n".encode() + p for p in parts)
    return body + delimiter + b"--\r\n" + epilogue


def post(kit: WebKit, body: Any, path: str = STUDIES, content_type: str = DICOM_TYPE,
         headers: dict[str, str] | None = None) -> Any:
    return kit.client.post(path, content=body, headers={
        **(AUTH if headers is None else headers), "Content-Type": content_type})


def items(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(document.get(tag, {}).get("Value", []))


def value(item: dict[str, Any], tag: str) -> Any:
    values = item[tag].get("Value")
    return values[0] if values else None


def referenced(response: Any) -> list[str]:
    return [value(i, stow.REFERENCED_SOP_INSTANCE_UID)
            for i in items(response.json(), stow.REFERENCED_SOP_SEQUENCE)]


def failed(response: Any) -> list[tuple[str | None, int]]:
    return [(value(i, stow.REFERENCED_SOP_INSTANCE_UID), value(i, stow.FAILURE_REASON))
            for i in items(response.json(), stow.FAILED_SOP_SEQUENCE)]


def assert_nothing_stored(kit: WebKit) -> None:
    assert kit.instance_count() == 0, "an instance was stored"
    assert kit.spool_files() == [], "a file was left in the spool"


def uid_mismatch_file() -> tuple[bytes, str]:
    """A Part-10 file whose file meta names another SOP Instance UID than its dataset."""
    ds = dcmread(bundled_file("CT_small.dcm"))
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue(), "1.2.3.4.5"


def test_one_instance_is_stored_like_a_c_store(kit: WebKit) -> None:
    raw, uid = dicom_bytes()

    response = post(kit, related([raw]))

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    document = response.json()
    (item,) = items(document, stow.REFERENCED_SOP_SEQUENCE)
    assert value(item, stow.REFERENCED_SOP_INSTANCE_UID) == uid
    assert value(item, stow.REFERENCED_SOP_CLASS_UID) == str(dcmread(io.BytesIO(raw)).SOPClassUID)
    assert item[stow.RETRIEVE_URL] == {"vr": "UR"}  # Type 2, empty: no WADO-RS here
    assert document[stow.RETRIEVE_URL] == {"vr": "UR"}
    assert stow.FAILED_SOP_SEQUENCE not in document
    (record,) = kit.ledger.operators.where(uid)
    assert (record.calling_aet, record.called_aet, record.source_ip) == (
        "STOW_RS", ROUTER_AET, "testclient")
    assert record.spool_path is not None
    spooled = kit.services.spool.path_of(record.spool_path).read_bytes()
    assert split_part10(spooled) == split_part10(raw)  # the dataset as sent
    assert dcmread(io.BytesIO(spooled)).file_meta.SourceApplicationEntityTitle == "STOW_RS"
    assert [d.state for d in record.deliveries] == ["pending", "pending"]
    assert kit.services.dispatcher.woken == [["ORTHANC1", "ORTHANC-PROBE"]]
    metrics = kit.client.get("/metrics").text
    assert metric_value(metrics, "dde_received_instances_total") == 1


def test_several_instances_are_answered_in_their_order(kit: WebKit) -> None:
    files = [dicom_bytes(patient_id=f"STOW-{n}") for n in range(3)]

    response = post(kit, related([raw for raw, _ in files]))

    assert response.status_code == 200, response.text
    assert referenced(response) == [uid for _, uid in files]
    assert kit.instance_count() == 3 and len(kit.spool_files()) == 3


def test_an_instance_of_another_study_is_not_stored_on_the_study_url(kit: WebKit) -> None:
    study = generate_uid()
    mine, my_uid = dicom_bytes(study_uid=study)
    other, other_uid = dicom_bytes()

    response = post(kit, related([mine, other]), path=f"{STUDIES}/{study}")

    assert response.status_code == 202, response.text
    assert referenced(response) == [my_uid]
    assert failed(response) == [(other_uid, dimse.STUDY_INSTANCE_UID_MISMATCH)]
    assert failed(response) == [(other_uid, 0xA900)]
    assert kit.ledger.operators.where(other_uid) == []
    assert kit.instance_count() == 1 and len(kit.spool_files()) == 1
    metrics = kit.client.get("/metrics").text
    assert metric_value(metrics, "dde_refused_instances_total", 'reason="study_mismatch"') == 1


def test_all_refused_is_409_with_the_c_store_status(kit: WebKit) -> None:
    raw, meta_uid = uid_mismatch_file()

    response = post(kit, related([raw]))

    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    assert failed(response) == [(meta_uid, dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS)]
    assert stow.REFERENCED_SOP_SEQUENCE not in response.json()
    assert_nothing_stored(kit)


def test_a_part_that_is_not_dicom_is_listed_as_failed(kit: WebKit) -> None:
    raw, uid = dicom_bytes()

    response = post(kit, related([b"plain text, not DICOM " * 20, raw, b""]))

    assert response.status_code == 202, response.text
    assert referenced(response) == [uid]
    assert failed(response) == [(None, dimse.CANNOT_UNDERSTAND)] * 2
    assert kit.instance_count() == 1 and len(kit.spool_files()) == 1


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    "multipart/form-data; boundary=x",
    'multipart/related; type="application/dicom+json"; boundary=x',
    "multipart/related; boundary=x",
])
def test_other_media_types_are_415(kit: WebKit, content_type: str) -> None:
    raw, _ = dicom_bytes()
    response = post(kit, related([raw]), content_type=content_type)
    assert response.status_code == 415, response.text
    assert response.json()["error"] == "unsupported_media_type"
    assert_nothing_stored(kit)


def test_a_metadata_part_refuses_the_request(kit: WebKit) -> None:
    raw, _ = dicom_bytes()
    body = related([raw]).replace(b"--\r\n", b"\r\nContent-Type: application/dicom+json"
                                  b"\r\n\r\n[]\r\n--" + BOUNDARY.encode() + b"--\r\n")
    response = post(kit, body)
    assert response.status_code == 415, response.text
    assert "application/dicom+json" in response.json()["detail"]
    assert_nothing_stored(kit)


def test_no_token_is_401(kit: WebKit) -> None:
    raw, _ = dicom_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = post(kit, related([raw]), headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthorized"
    assert_nothing_stored(kit)


@pytest.mark.parametrize("body", [
    b"",
    b"no delimiter at all",
    b"\r\n--" + BOUNDARY.encode() + b"--\r\n",  # no part
])
def test_a_body_without_parts_is_400(kit: WebKit, body: bytes) -> None:
    response = post(kit, body)
    assert response.status_code == 400, response.text
    assert_nothing_stored(kit)


def test_a_truncated_body_stores_nothing(kit: WebKit) -> None:
    first, _ = dicom_bytes()
    second, _ = dicom_bytes()
    body = related([first, second])
    response = post(kit, body[:-len(second) // 2 - 40])
    assert response.status_code == 400, response.text
    assert "close delimiter" in response.json()["detail"]
    assert_nothing_stored(kit)


def asgi_post(kit: WebKit, path: str, content_type: str,
              chunks: Iterable[bytes]) -> tuple[int, dict[str, Any]]:
    """POST to the application itself (its middleware included) with the body in exactly
    these chunks (the TestClient would join them): (status, JSON answer)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("testserver", 80),
             "headers": [(b"authorization", AUTH["Authorization"].encode()),
                         (b"content-type", content_type.encode()),
                         (b"transfer-encoding", b"chunked")]}
    source = iter(chunks)
    answer: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    run_coroutine(kit.app(scope, receive, send))
    return answer["status"], json.loads(answer["body"])


def test_preamble_epilogue_quoted_boundary_and_one_byte_chunks(kit: WebKit) -> None:
    files = [dicom_bytes() for _ in range(2)]
    body = related([raw for raw, _ in files], preamble=b"a preamble to skip",
                   epilogue=b"an epilogue to ignore\r\n")
    quoted = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'

    status, document = asgi_post(kit, STUDIES, quoted,
                                 (body[i:i + 1] for i in range(len(body))))

    assert status == 200, document
    assert [value(i, stow.REFERENCED_SOP_INSTANCE_UID)
            for i in items(document, stow.REFERENCED_SOP_SEQUENCE)] == [u for _, u in files]


def large_part(megabytes: int, chunk: bytes) -> Iterator[bytes]:
    """One Part-10 instance of ``megabytes`` MiB as a multipart body, made as it is sent:
    the header by pydicom, then the Pixel Data element's header and ``chunk`` again and
    again (never the whole instance in memory)."""
    frames = megabytes * 2**20 // FRAME_BYTES
    header = make_header(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                         rows=FRAME_SIDE, columns=FRAME_SIDE,
                         sop_class_uid=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                         modality="OT", patient_id="STOW-LARGE", patient_name="Large^Stow",
                         accession="LARGE1")
    header.NumberOfFrames = frames
    buffer = io.BytesIO()
    header.save_as(buffer, enforce_file_format=True)
    length = frames * FRAME_BYTES
    yield (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
           + buffer.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
    while length:
        piece = chunk if length >= len(chunk) else chunk[:length]
        length -= len(piece)
        yield piece
    yield b"\r\n--" + BOUNDARY.encode() + b"--\r\n"


@pytest.mark.slow
def test_a_large_part_is_not_held_in_memory(tmp_path: Path) -> None:
    kit = make_webkit(tmp_path, web=WebSettings(max_upload_bytes=1 << 30))
    chunk = bytes(64 * 1024)  # what uvicorn hands on at a time
    tracemalloc.start()
    try:
        status, document = asgi_post(kit, STUDIES, DICOM_TYPE, large_part(200, chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert status == 200, document
    (record,) = kit.ledger.operators.search(patient_id="STOW-LARGE")[1]
    assert record.size > 200 * 10**6
    assert peak < 20 * 2**20, f"peak of {peak / 2**20:.1f} MiB while receiving 200 MiB"


def test_a_body_over_the_limit_is_413_and_stores_nothing(tmp_path: Path) -> None:
    small = make_webkit(tmp_path, web=WebSettings(max_upload_bytes=64 * 1024))
    raw, _ = dicom_bytes()
    big, _ = dicom_bytes(rows=256)  # 128 KiB of pixels
    body = related([raw, big])

    def chunked() -> Iterator[bytes]:  # no Content-Length to refuse up front
        yield from (body[i:i + 8192] for i in range(0, len(body), 8192))

    for sent in (body, chunked()):
        response = post(small, sent, path=f"{STUDIES}/{generate_uid()}")
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "payload_too_large"
        assert_nothing_stored(small)


def test_too_many_parts_is_413(kit: WebKit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stow, "MAX_STOW_PARTS", 2)
    response = post(kit, related([dicom_bytes()[0] for _ in range(3)]))
    assert response.status_code == 413, response.text
    assert "more than 2 parts" in response.json()["detail"]
    assert_nothing_stored(kit)


def test_a_part_that_cannot_be_written_is_refused_out_of_resources(
        kit: WebKit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kit.services.spool.prepared, "take",
                        lambda: tmp_path / "no-such-folder" / "part.dcm")
    raw, uid = dicom_bytes()

    response = post(kit, related([raw]))

    assert response.status_code == 409, response.text
    assert failed(response) == [(uid, dimse.OUT_OF_RESOURCES)]
    assert_nothing_stored(kit)
