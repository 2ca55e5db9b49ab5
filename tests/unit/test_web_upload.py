"""``POST /api/instances``: files and zips through the durable receive path; every refusal
is a 4xx JSON answer with nothing stored; uploaded names never become paths."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from tests.support.unitkit import bundled_file, split_part10
from tests.support.webkit import (
    AUTH,
    ROUTER_AET,
    TOKEN,
    WebKit,
    dicom_bytes,
    make_webkit,
    metric_value,
    zip_of,
)

from dde.config import WebSettings
from dde.dicom import status as dimse
from dde.web import upload

LIMIT = 64 * 1024


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


@pytest.fixture
def small(tmp_path: Path) -> WebKit:
    """A router taking uploads of at most LIMIT bytes."""
    return make_webkit(tmp_path, web=WebSettings(max_upload_bytes=LIMIT))


def post(kit: WebKit, files: list[tuple[str, bytes]], **kwargs: Any) -> Any:
    return kit.client.post("/api/instances", files=[("file", f) for f in files],
                           headers=kwargs.pop("headers", AUTH), **kwargs)


def assert_refused(response: Any, status: int, error: str, kit: WebKit) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert kit.instance_count() == 0, "an instance was stored"
    assert kit.spool_files() == [], "a spool file was left"
    return body


def spooled_dataset(kit: WebKit, uid: str) -> tuple[str, bytes]:
    (record,) = kit.ledger.operators.where(uid)
    assert record.spool_path is not None
    return split_part10(kit.services.spool.path_of(record.spool_path).read_bytes())


def test_one_file_is_stored_like_a_c_store(kit: WebKit) -> None:
    raw, uid = dicom_bytes()

    response = post(kit, [("scan.dcm", raw)])

    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 1, "refused": 0, "skipped": 0, "files": [{
        "name": "scan.dcm", "status": "stored", "dicom_status": dimse.SUCCESS,
        "detail": "stored", "sop_instance_uid": uid,
        "destinations": ["ORTHANC1", "ORTHANC-PROBE"]}]}
    (record,) = kit.ledger.operators.where(uid)
    assert (record.calling_aet, record.called_aet, record.source_ip) == (
        upload.WEB_CALLING_AET, ROUTER_AET, "testclient")
    assert spooled_dataset(kit, uid) == split_part10(raw)  # the bytes as received
    assert [d.state for d in record.deliveries] == ["pending", "pending"]
    assert kit.services.dispatcher.woken == [["ORTHANC1", "ORTHANC-PROBE"]]


def test_many_files_in_one_request(kit: WebKit) -> None:
    files = [dicom_bytes() for _ in range(3)]

    response = post(kit, [(f"f{i}.dcm", raw) for i, (raw, _) in enumerate(files)])

    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 3
    assert [f["sop_instance_uid"] for f in response.json()["files"]] == [u for _, u in files]
    assert kit.instance_count() == 3 and len(kit.spool_files()) == 3


def test_a_compressed_file_keeps_its_transfer_syntax_and_bytes(kit: WebKit) -> None:
    path = bundled_file("JPEG2000.dcm")
    raw = path.read_bytes()
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)

    response = post(kit, [("jp2.dcm", raw)])

    assert response.status_code == 200, response.text
    assert response.json()["files"][0]["status"] == "stored"
    assert spooled_dataset(kit, uid) == split_part10(raw)


def test_a_zip_with_two_files_gives_two_results(kit: WebKit) -> None:
    (one, uid1), (two, uid2) = dicom_bytes(), dicom_bytes()
    archive = zip_of({"study/one.dcm": one, "study/two.dcm": two, "study/": b"",
                      "__MACOSX/study/._one.dcm": b"apple"})

    response = post(kit, [("study.zip", archive)])

    assert response.status_code == 200, response.text
    results = response.json()["files"]
    assert [(r["name"], r["status"], r["sop_instance_uid"]) for r in results] == [
        ("study.zip/study/one.dcm", "stored", uid1), ("study.zip/study/two.dcm", "stored", uid2)]
    assert spooled_dataset(kit, uid2) == split_part10(two)


def test_a_dicomdir_in_a_zip_is_skipped(kit: WebKit) -> None:
    raw, uid = dicom_bytes()
    archive = zip_of({"DICOMDIR": bundled_file("DICOMDIR").read_bytes(), "IM1": raw})

    response = post(kit, [("cd.zip", archive)])

    assert response.status_code == 200, response.text
    assert [(r["name"], r["status"]) for r in response.json()["files"]] == [
        ("cd.zip/DICOMDIR", "skipped"), ("cd.zip/IM1", "stored")]
    assert kit.instance_count() == 1


@pytest.mark.parametrize("junk", [b"hello, not DICOM", b"\x00" * 128 + b"DICM", b"DICM" * 100])
def test_non_dicom_is_415_and_nothing_is_stored(kit: WebKit, junk: bytes) -> None:
    good, _ = dicom_bytes()
    body = assert_refused(post(kit, [("good.dcm", good), ("bad.txt", junk)]), 415,
                          "not_dicom", kit)
    assert [f["name"] for f in body["files"]] == ["bad.txt"]
    assert "nothing was stored" in body["detail"]


def test_a_zip_with_a_non_dicom_entry_skips_it(kit: WebKit) -> None:
    good, _ = dicom_bytes()
    archive = zip_of({"good.dcm": good, "notes.txt": b"not an image"})
    response = post(kit, [("a.zip", archive)])
    assert response.status_code == 200, response.text
    assert [(f["name"], f["status"]) for f in response.json()["files"]] == [
        ("a.zip/good.dcm", "stored"), ("a.zip/notes.txt", "skipped")]
    assert kit.instance_count() == 1


def test_a_zip_inside_a_zip_is_not_opened(kit: WebKit) -> None:
    inner = zip_of({"one.dcm": dicom_bytes()[0]})
    response = post(kit, [("outer.zip", zip_of({"inner.zip": inner}))])
    assert response.status_code == 200, response.text
    assert [f["status"] for f in response.json()["files"]] == ["skipped"]
    assert kit.instance_count() == 0 and kit.spool_files() == []


def test_empty_uploads_are_400(kit: WebKit) -> None:
    good, _ = dicom_bytes()
    assert_refused(post(kit, [("good.dcm", good), ("empty.dcm", b"")]), 400, "empty_upload",
                   kit)
    assert_refused(post(kit, [("empty.zip", zip_of({}))]), 400, "empty_upload", kit)
    assert_refused(post(kit, [("dirs.zip", zip_of({"a/": b"", "a/b/": b""}))]), 400,
                   "empty_upload", kit)


def test_a_request_without_files_is_422(kit: WebKit) -> None:
    response = kit.client.post("/api/instances", data={"x": "1"}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert "file" in response.json()["detail"]


def test_an_upload_over_the_limit_is_413(small: WebKit) -> None:
    big, _ = dicom_bytes(rows=256)  # 128 KiB of pixels
    assert_refused(post(small, [("big.dcm", big)]), 413, "payload_too_large", small)

    def stream() -> Any:  # chunked: no Content-Length to refuse up front
        boundary = b"--b\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        yield big
        yield b"\r\n--b--\r\n"

    response = small.client.post("/api/instances", content=stream(), headers={
        **AUTH, "content-type": "multipart/form-data; boundary=b"})
    assert_refused(response, 413, "payload_too_large", small)


def zero_pixels(rows: int) -> bytes:
    """A Part-10 file whose pixels are all zero (compresses very well)."""
    ds = dcmread(io.BytesIO(dicom_bytes(rows=rows)[0]))
    ds.PixelData = bytes(rows * rows * 2)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_zip_entries_count_towards_the_limit(small: WebKit) -> None:
    archive = zip_of({f"{i}.dcm": zero_pixels(64) for i in range(10)})  # 8 KiB of pixels each
    assert len(archive) < LIMIT // 4
    body = assert_refused(post(small, [("many.zip", archive)]), 413, "payload_too_large", small)
    assert "web.max_upload_bytes" in body["detail"]


def test_a_zip_bomb_is_refused_before_extraction(kit: WebKit,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = zip_of({"a.dcm": b"\x00" * (20 * 1024 * 1024)})
    assert len(bomb) < 100 * 1024
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)

    body = assert_refused(post(kit, [("bomb.zip", bomb)]), 413, "payload_too_large", kit)
    assert "zip bomb" in body["detail"]
    assert opened == []


def test_too_many_zip_entries_are_refused(kit: WebKit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload, "MAX_ZIP_ENTRIES", 3)
    archive = zip_of({f"{i}.dcm": dicom_bytes()[0] for i in range(4)})
    body = assert_refused(post(kit, [("many.zip", archive)]), 413, "payload_too_large", kit)
    assert "4 entries" in body["detail"]


def test_a_zip_lying_about_its_sizes_is_refused(kit: WebKit) -> None:
    raw, _ = dicom_bytes(rows=32)
    archive = bytearray(zip_of({"a.dcm": raw}))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = archive.index(signature) + offset
        struct.pack_into("<I", archive, at, 100)  # declares 100 bytes uncompressed
    assert_refused(post(kit, [("liar.zip", bytes(archive))]), 415, "unsupported_media_type",
                   kit)


def test_a_corrupt_zip_is_415(kit: WebKit) -> None:
    archive = zip_of({"a.dcm": dicom_bytes()[0]})
    assert_refused(post(kit, [("broken.zip", archive[:-30])]), 415, "unsupported_media_type",
                   kit)


def test_path_traversal_names_are_labels_only(kit: WebKit, tmp_path: Path) -> None:
    one, uid1 = dicom_bytes()
    two, uid2 = dicom_bytes()
    archive = zip_of({"../../../escaped.dcm": two})

    response = post(kit, [("../../etc/passwd.dcm", one), ("/abs/../x.zip", archive)])

    assert response.status_code == 200, response.text
    names = [f["name"] for f in response.json()["files"]]
    assert names == ["../../etc/passwd.dcm", "/abs/../x.zip/../../../escaped.dcm"]
    spool = kit.services.spool.root
    files = kit.spool_files()
    assert len(files) == 2
    for path in files:
        assert path.parent.parent == spool and len(path.stem) == 32 and path.suffix == ".dcm"
    assert not list(tmp_path.rglob("passwd.dcm")) and not list(tmp_path.rglob("escaped.dcm"))
    assert {uid1, uid2} == kit.ledger.diagnostics.sop_instance_uids()


def test_a_refusal_by_the_receive_path_is_reported_per_file(kit: WebKit) -> None:
    good, uid = dicom_bytes()
    ds = dcmread(bundled_file("CT_small.dcm"))
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"  # differs from the dataset's
    buffer = io.BytesIO()
    ds.save_as(buffer)
    response = post(kit, [("good.dcm", good), ("mismatch.dcm", buffer.getvalue())])

    assert response.status_code == 200, response.text
    document = response.json()
    assert (document["stored"], document["refused"]) == (1, 1)
    refused = document["files"][1]
    assert refused["status"] == "refused"
    assert refused["dicom_status"] == dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "differs" in refused["detail"] and refused["destinations"] == []
    assert kit.instance_count() == 1 and len(kit.spool_files()) == 1
    metrics = kit.client.get("/metrics").text
    assert metric_value(metrics, "dde_refused_instances_total", 'reason="uid_mismatch"') == 1
    assert metric_value(metrics, "dde_received_instances_total") == 1
    assert [r.sop_instance_uid for r in kit.ledger.operators.where(uid)] == [uid]


def test_a_session_upload_with_csrf(kit: WebKit) -> None:
    csrf = kit.client.post("/login", json={"token": TOKEN}).json()["csrf_token"]
    raw, _ = dicom_bytes()

    refused = post(kit, [("a.dcm", raw)], headers={})
    assert refused.status_code == 403 and kit.instance_count() == 0
    response = post(kit, [("a.dcm", raw)], headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200, response.text
    response = kit.client.post("/api/instances", files=[("file", ("b.dcm", dicom_bytes()[0]))],
                               data={"csrf_token": csrf})
    assert response.status_code == 200, response.text
    assert kit.instance_count() == 2
