"""Storage commitment against a real Orthanc (a Storage Commitment SCP since 1.6), with
DCMTK's storescu sending to the router.

The endpoint has ``storage_commitment: true``; Orthanc lists the router as a modality
(``PUT /modalities/router``, once the router's port is known): it answers the router's
N-ACTION, looks the instances up in a job, and opens an association to the router to send
its N-EVENT-REPORT (proposing the SCP role of the SOP class).

The instances are sent while the endpoint points at a closed port (they wait, no attempt
spent), then at Orthanc: the new worker claims them as one batch, so the N-ACTIONs (one per
study) come after every C-STORE of the batch.

A real failure: Orthanc keeps one patient (``MaximumPatientCount: 1``, recycling), so when
the second study (another patient) of the batch is stored, the first patient's instances
are deleted by Orthanc itself, after their C-STORE succeeded and before the commitment
request is looked at. Orthanc reports them failed (no such object instance); the router
queues them again, sends them again, and the second commitment succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, storescu, wait_until
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router

from dde.reports import where_document
from dde.synthetic import make_instance

pytestmark = pytest.mark.integration


@dataclass
class Deployment:
    router: InProcessRouter
    orthanc: RunningOrthanc


def deploy(orthanc: RunningOrthanc, home: Path, processes: int = 1) -> Deployment:
    """The router with a storage-commitment endpoint for ``orthanc``, pointing at a closed
    port until :func:`connect`, receiving in ``processes`` receiver processes (0: in the
    main one); Orthanc told where the router is."""
    settings = router_settings([orthanc], None, receiver={"processes": processes})
    endpoint = settings.endpoints[0].model_copy(update={"storage_commitment": True,
                                                        "port": free_port()})
    router = start_router(home, settings.model_copy(update={"endpoints": [endpoint]}))
    response = httpx.put(f"{orthanc.url}/modalities/router", timeout=10, json={
        "AET": ROUTER_AET, "Host": "127.0.0.1", "Port": router.port})
    response.raise_for_status()
    return Deployment(router, orthanc)


def connect(deployment: Deployment) -> None:
    router = deployment.router
    settings = router.app.settings
    endpoints = [e.model_copy(update={"port": deployment.orthanc.dicom_port})
                 for e in settings.endpoints]
    router.app.apply(settings.model_copy(update={"endpoints": endpoints}),
                     router.app.core.ruleset)


@pytest.fixture(params=[1, 0], ids=["receiver-process", "main-process"])
def committing(orthanc_factory: OrthancFactory, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """The report reaches a receiver process, or the main process's receiver."""
    deployment = deploy(orthanc_factory("ORTHANC1"), tmp_path / "home", request.param)
    try:
        yield deployment
    finally:
        deployment.router.stop()


@pytest.fixture
def forgetful(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[Deployment]:
    deployment = deploy(orthanc_factory("ORTHANC1", extra={"MaximumPatientCount": 1}),
                        tmp_path / "home")
    try:
        yield deployment
    finally:
        deployment.router.stop()


def write_study(folder: Path, patient_id: str, count: int) -> tuple[list[Path], list[str]]:
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    files, uids = [], []
    for number in range(1, count + 1):
        dataset = make_instance(study_uid=study, series_uid=series, number=number,
                                patient_id=patient_id, rows=16, columns=16)
        path = folder / f"{patient_id}-{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(str(dataset.SOPInstanceUID))
    return files, uids


def delivery(router: InProcessRouter, uid: str) -> dict[str, object]:
    records = router.ledger.operators.where(uid)
    assert records, f"{uid} is not in the ledger"
    deliveries = where_document(records)["deliveries"]
    assert len(deliveries) == 1
    return dict(deliveries[0])


def test_a_delivered_study_is_committed_after_orthancs_report(
        committing: Deployment, tmp_path: Path) -> None:
    files, uids = write_study(tmp_path / "study", "DDE-COMMIT-1", 3)
    storescu(files, committing.router.port, ROUTER_AET)
    assert [delivery(committing.router, uid)["commitment"] for uid in uids] == [None] * 3

    connect(committing)

    wait_until(lambda: all(delivery(committing.router, uid)["commitment"] == "committed"
                           for uid in uids), 30, "every delivery committed")
    for uid in uids:
        found = delivery(committing.router, uid)
        assert (found["state"], found["attempts"], found["commitment_reason"]) == (
            "delivered", 1, None)
    # one batch, one study: one N-ACTION
    assert committing.router.ledger.commitments.counts() == {"ORTHANC1": {"committed": 1}}
    assert committing.orthanc.sop_instance_uids() == set(uids)


def test_instances_orthanc_no_longer_holds_fail_their_commitment_and_are_sent_again(
        forgetful: Deployment, tmp_path: Path) -> None:
    first, first_uids = write_study(tmp_path / "a", "DDE-COMMIT-A", 2)
    second, second_uids = write_study(tmp_path / "b", "DDE-COMMIT-B", 2)
    storescu(first + second, forgetful.router.port, ROUTER_AET)

    connect(forgetful)

    router = forgetful.router
    wait_until(lambda: all(delivery(router, uid)["commitment"] == "committed"
                           for uid in first_uids + second_uids), 60,
               "every delivery committed in the end")
    for uid in first_uids:
        found = delivery(router, uid)
        assert (found["state"], found["attempts"]) == ("delivered", 2)
        history = router.ledger.commitments.history(int(str(found["id"])))
        assert [h.state.value for h in history] == ["failed", "committed"]
        assert history[0].reason is not None
        assert "0x0112 (no such object instance)" in history[0].reason
    for uid in second_uids:
        found = delivery(router, uid)
        assert (found["state"], found["attempts"]) == ("delivered", 1)
    counts = router.ledger.commitments.counts()["ORTHANC1"]
    assert counts == {"failed": 1, "committed": 2}
    # Orthanc kept the patient stored last: the first one, sent again
    assert forgetful.orthanc.sop_instance_uids() == set(first_uids)
