"""Issue item 12: a zip as exported on a CD (DICOMDIR, README.TXT, images) is taken: what
is not DICOM in it is skipped and listed, like the DICOMDIR; a non-DICOM file uploaded on
its own is still refused whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.unitkit import bundled_file
from tests.support.webkit import AUTH, WebKit, dicom_bytes, make_webkit, zip_of

from dde.web.schemas_ledger import UploadResult

README = b"This CD holds images exported by a PACS. Open DICOMDIR with a viewer.\r\n"


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


def test_a_cd_export_zip_stores_its_images_and_skips_the_readme(kit: WebKit) -> None:
    first, first_uid = dicom_bytes()
    second, second_uid = dicom_bytes()
    archive = zip_of({"DICOMDIR": bundled_file("DICOMDIR").read_bytes(),
                      "README.TXT": README, "DICOM/IM1": first, "DICOM/IM2": second})

    response = kit.client.post("/api/instances", headers=AUTH,
                               files=[("file", ("cd.zip", archive))])

    assert response.status_code == 200, response.text
    body = response.json()
    UploadResult.model_validate(body)
    assert (body["stored"], body["refused"], body["skipped"]) == (2, 0, 2)
    statuses = {f["name"]: f["status"] for f in body["files"]}
    assert statuses == {"cd.zip/DICOMDIR": "skipped", "cd.zip/README.TXT": "skipped",
                        "cd.zip/DICOM/IM1": "stored", "cd.zip/DICOM/IM2": "stored"}
    readme = next(f for f in body["files"] if f["name"] == "cd.zip/README.TXT")
    assert readme["sop_instance_uid"] is None and readme["dicom_status"] is None
    assert "not DICOM" in readme["detail"]
    stored = {f["sop_instance_uid"] for f in body["files"] if f["status"] == "stored"}
    assert stored == {first_uid, second_uid}
    assert kit.instance_count() == 2


def test_a_zip_of_nothing_but_non_dicom_files_stores_nothing(kit: WebKit) -> None:
    archive = zip_of({"README.TXT": README, "autorun.inf": b"[autorun]\n"})
    response = kit.client.post("/api/instances", headers=AUTH,
                               files=[("file", ("docs.zip", archive))])
    assert response.status_code == 200, response.text
    assert [f["status"] for f in response.json()["files"]] == ["skipped", "skipped"]
    assert kit.instance_count() == 0 and kit.spool_files() == []


def test_a_non_dicom_file_uploaded_alone_is_still_refused_whole(kit: WebKit) -> None:
    good, _ = dicom_bytes()
    response = kit.client.post("/api/instances", headers=AUTH, files=[
        ("file", ("good.dcm", good)), ("file", ("README.TXT", README))])
    assert response.status_code == 415, response.text
    body = response.json()
    assert body["error"] == "not_dicom"
    assert [f["name"] for f in body["files"]] == ["README.TXT"]
    assert kit.instance_count() == 0 and kit.spool_files() == []
