"""STOW-RS into a real router process (``python -m dde serve``) in front of real Orthancs:
sent with the ``dicomweb-client`` package and with curl, answered with the standard's
response, delivered to a storage PACS and the probe with the dataset as sent, and in the
ledger as received from the calling AE ``STOW_RS`` (``dde where``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from tests.support.datagen import write_series
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, wait_until
from tests.support.router import RouterProcess, router_settings, write_router_home
from tests.support.unitkit import split_part10

from dde.config import Home
from dde.dicom import status as dimse
from dde.web.auth import load_token

pytestmark = pytest.mark.integration

CURL = "/usr/bin/curl"
BOUNDARY = "dde-curl-boundary"


@dataclass
class LiveRouter:
    router: RouterProcess
    storages: list[RunningOrthanc]
    probe: RunningOrthanc
    web_url: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def where(self, uid: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "dde", "--home", str(self.router.home), "where", uid,
             "--json"], capture_output=True, text=True, timeout=60, check=False,
            env={k: v for k, v in os.environ.items() if k != "DDE_HOME"})
        assert result.returncode == 0, result.stdout + result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def delivered(self, sent: dict[str, bytes]) -> RunningOrthanc:
        """Wait until every instance is in the probe and one storage with the dataset as
        sent; that storage."""
        self.router.wait_idle()
        self.probe.wait_for_sop_instance_uids(sent, timeout=30)
        holders = [s for s in self.storages if set(sent) <= s.sop_instance_uids()]
        assert len(holders) == 1, "one study goes to one storage PACS"
        for uid, dataset in sent.items():
            assert split_part10(holders[0].file_bytes(uid))[1] == dataset
            assert split_part10(self.probe.file_bytes(uid))[1] == dataset
        return holders[0]


@pytest.fixture
def live(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[LiveRouter]:
    storages = [orthanc_factory("ORTHANC1"), orthanc_factory("ORTHANC2")]
    probe = orthanc_factory("ORTHANC-PROBE")
    port, web_port = free_port(), free_port()
    home = tmp_path / "router-home"
    write_router_home(home, router_settings(storages, probe, port=port,
                                            web={"port": web_port}))
    token = load_token(Home(home))  # the router reads the same token file
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start(timeout=60)
    web_url = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(lambda: _answers(web_url), 20, "the router's web side answers")
        yield LiveRouter(router, storages, probe, web_url, token)
    finally:
        if router.process is not None and router.process.poll() is None:
            try:
                router.terminate()
            except subprocess.TimeoutExpired:
                router.kill()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", trust_env=False, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def encoded(dataset: pydicom.Dataset) -> bytes:
    """The Part-10 bytes dicomweb-client sends for ``dataset`` (it writes with pydicom)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset)
    return buffer.getvalue()


def test_dicomweb_client_stores_through_the_durable_path(live: LiveRouter,
                                                         tmp_path: Path) -> None:
    datasets = [pydicom.dcmread(f) for f in write_series(tmp_path / "in", 3,
                                                         patient_id="STOW-LIVE-1")]
    uids = [str(d.SOPInstanceUID) for d in datasets]
    client = DICOMwebClient(url=f"{live.web_url}/dicom-web", headers=live.auth)

    answer = client.store_instances(datasets)

    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == uids
    assert [str(i.ReferencedSOPClassUID) for i in answer.ReferencedSOPSequence] == [
        str(d.SOPClassUID) for d in datasets]
    assert "FailedSOPSequence" not in answer
    live.delivered({uid: split_part10(encoded(d))[1]
                    for uid, d in zip(uids, datasets, strict=True)})
    where = live.where(uids[0])
    assert where["calling_aet"] == "STOW_RS"
    assert sorted(d["state"] for d in where["deliveries"]) == ["delivered", "delivered"]


def test_the_study_url_refuses_an_instance_of_another_study(live: LiveRouter,
                                                            tmp_path: Path) -> None:
    study = generate_uid()
    mine = pydicom.dcmread(write_series(tmp_path / "mine", 1, study_uid=study)[0])
    other = pydicom.dcmread(write_series(tmp_path / "other", 1)[0])
    client = DICOMwebClient(url=f"{live.web_url}/dicom-web", headers=live.auth)

    answer = client.store_instances([mine, other], study_instance_uid=study)

    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
        str(mine.SOPInstanceUID)]
    (failure,) = answer.FailedSOPSequence
    assert str(failure.ReferencedSOPInstanceUID) == str(other.SOPInstanceUID)
    assert failure.FailureReason == dimse.STUDY_INSTANCE_UID_MISMATCH
    live.delivered({str(mine.SOPInstanceUID): split_part10(encoded(mine))[1]})
    assert str(other.SOPInstanceUID) not in live.probe.sop_instance_uids()


def curl(live: LiveRouter, body: Path, output: Path, *headers: str) -> int:
    result = subprocess.run(
        [CURL, "-sS", "-X", "POST", *(a for h in headers for a in ("-H", h)),
         "-H", f'Content-Type: multipart/related; type="application/dicom"; '
               f"boundary={BOUNDARY}",
         "--data-binary", f"@{body}", "-o", str(output), "-w", "%{http_code}",
         f"{live.web_url}/dicom-web/studies"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_curl_posts_a_body_file(live: LiveRouter, tmp_path: Path) -> None:
    files = write_series(tmp_path / "in", 2, patient_id="STOW-LIVE-CURL")
    body = tmp_path / "body"
    with body.open("wb") as out:
        for path in files:
            out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            out.write(path.read_bytes())
            out.write(b"\r\n")
        out.write(f"--{BOUNDARY}--\r\n".encode())
    answer = tmp_path / "answer.json"

    assert curl(live, body, answer) == 401  # no token
    assert json.loads(answer.read_text())["error"] == "unauthorized"
    assert curl(live, body, answer, f"Authorization: Bearer {live.token}") == 200

    document = json.loads(answer.read_text())
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    assert [item["00081155"]["Value"][0] for item in document["00081199"]["Value"]] == uids
    live.delivered({uid: split_part10(p.read_bytes())[1]
                    for uid, p in zip(uids, files, strict=True)})
    assert live.where(uids[1])["calling_aet"] == "STOW_RS"
