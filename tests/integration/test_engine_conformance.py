"""The engine's acceptor receiving from software we did not write — DCMTK's dcmsend,
pynetdicom (several contexts, four parallel associations, 1 KB PDUs, user identity) and
Orthanc as a sender (synchronously and as a job) — and keeping every dataset byte for byte
as sent."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import wait_until
from tests.support.senders import keep_responses_for_the_waiting_call
from tests.support.unitkit import split_part10

from dde.config import ReceiverSettings
from dde.dicom import status as dimse
from dde.receiving.ingest import IngestPipeline
from dde.receiving.scp import StorageSCP
from dde.synthetic import make_instance

pytestmark = pytest.mark.integration

ROUTER_AET = "DYNAMIC_DICOM_MW"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


class KeepingPipeline:
    """Stands in for ingest: keeps each received dataset (after its file meta)."""

    def __init__(self) -> None:
        self.kept: dict[str, bytes] = {}
        self.syntaxes: dict[str, str] = {}
        self._lock = threading.Lock()

    def ingest(self, incoming: Any) -> Any:
        _, dataset = split_part10(incoming.dataset_file.read_bytes())
        incoming.dataset_file.unlink()  # the pipeline's once handed over
        with self._lock:
            self.kept[incoming.sop_instance_uid] = dataset
            self.syntaxes[incoming.sop_instance_uid] = incoming.transfer_syntax_uid
        return SimpleNamespace(status=dimse.SUCCESS, detail="stored")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[StorageSCP, KeepingPipeline]]:
    settings = ReceiverSettings(host="127.0.0.1", port=0, ae_title=ROUTER_AET,
                                max_pdu_size=1024)  # every dataset arrives in many PDUs
    pipeline = KeepingPipeline()
    scp = StorageSCP(settings, cast(IngestPipeline, pipeline), incoming_dir=tmp_path / "in")
    scp.start()
    try:
        yield scp, pipeline
    finally:
        scp.stop()


def write_files(folder: Path, count: int, modality: str = "CT",
                implicit: bool = False) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    files = {}
    for number in range(1, count + 1):
        ds = make_instance(study_uid=study, series_uid=series, number=number, rows=32,
                           columns=32, modality=modality)
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        path = folder / f"{modality}{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[str(ds.SOPInstanceUID)] = path
    return files


def assert_kept_as_sent(pipeline: KeepingPipeline, files: dict[str, Path]) -> None:
    assert set(pipeline.kept) >= set(files)
    for uid, path in files.items():
        assert pipeline.kept[uid] == split_part10(path.read_bytes())[1], path.name


def test_dcmsend(receiver: tuple[StorageSCP, KeepingPipeline], tmp_path: Path) -> None:
    scp, pipeline = receiver
    files = write_files(tmp_path / "files", 3)
    result = subprocess.run(["/usr/bin/dcmsend", "-aec", ROUTER_AET, "127.0.0.1",
                             str(scp.port), *map(str, files.values())], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert_kept_as_sent(pipeline, files)


def identity() -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = b"user"
    item.secondary_field = b"secret"
    return item


def test_pynetdicom_four_associations_several_contexts_and_user_identity(
        receiver: tuple[StorageSCP, KeepingPipeline], tmp_path: Path) -> None:
    scp, pipeline = receiver
    batches = [write_files(tmp_path / f"sender{i}", 4, "CT" if i % 2 else "MR",
                           implicit=i >= 2) for i in range(4)]
    failures: list[str] = []

    def send(files: dict[str, Path], syntax: str) -> None:
        ae = AE(ae_title=f"PYNET{threading.get_ident() % 100}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        # the files' own syntax only: pynetdicom would convert to another one accepted
        contexts = [build_context(sop, [syntax]) for sop in (CT, MR)]
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=ROUTER_AET, contexts=contexts,
                             ext_neg=[identity()])
        if not assoc.is_established:
            failures.append("not associated")
            return
        keep_responses_for_the_waiting_call(assoc)
        for path in files.values():
            status = getattr(assoc.send_c_store(path), "Status", None)
            if status != dimse.SUCCESS:
                failures.append(f"{path.name}: {status}")
        assoc.release()

    threads = [threading.Thread(target=send, args=(
        files, ImplicitVRLittleEndian if i >= 2 else ExplicitVRLittleEndian))
        for i, files in enumerate(batches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    for files in batches:
        assert_kept_as_sent(pipeline, files)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["synchronous", "job"])
def test_orthanc_as_sender(receiver: tuple[StorageSCP, KeepingPipeline],
                           orthanc_factory: OrthancFactory, tmp_path: Path, mode: str) -> None:
    scp, pipeline = receiver
    orthanc = orthanc_factory("SENDER")
    files = write_files(tmp_path / "files", 3)
    with httpx.Client(base_url=orthanc.url, timeout=30, trust_env=False) as client:
        ids = [client.post("/instances", content=path.read_bytes()).json()["ID"]
               for path in files.values()]
        client.put("/modalities/router", json={"AET": ROUTER_AET, "Host": "127.0.0.1",
                                               "Port": scp.port}).raise_for_status()
        body = {"Resources": ids, "Synchronous": mode == "synchronous"}
        answer = client.post("/modalities/router/store", json=body)
        answer.raise_for_status()
        if mode == "job":
            job = answer.json()["ID"]
            state = wait_until(
                lambda: (s := client.get(f"/jobs/{job}").json()["State"]) in
                ("Success", "Failure") and s, 30, "the store job ending")
            assert state == "Success"
        stored = {uid: orthanc.file_bytes(uid) for uid in files}
    assert set(pipeline.kept) == set(files)
    for uid, raw in stored.items():
        assert pipeline.kept[uid] == split_part10(raw)[1]
