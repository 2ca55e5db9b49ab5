"""The engine's storage commitment against pynetdicom, an independent implementation: the
router's N-ACTION (sender and requestor) read by a pynetdicom Storage Commitment SCP, and
a pynetdicom SCP's N-EVENT-REPORT (on an association it opens with the SCP role, as
Orthanc does) taken by the router's receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dde.config import DeliverySettings, EndpointSettings, ReceiverSettings
from dde.dicom import status as dimse
from dde.dicom.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE,
    CommitmentReport,
    CommitmentRequest,
    FailedReference,
    SopReference,
)
from dde.endpoints.dicom_sender import DicomSender
from dde.receiving.ingest import IngestPipeline
from dde.receiving.scp import StorageSCP

pytestmark = pytest.mark.integration

ROUTER_AET = "DYNAMIC_DICOM_MW"
CT = "1.2.840.10008.5.1.4.1.1.2"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class FakeScp:
    """A pynetdicom Storage Commitment SCP answering each N-ACTION with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[Dataset] = []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(StorageCommitmentPushModel, SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_N_ACTION, self._action)])
        self.port = int(self.server.server_address[1])

    def _action(self, event: Any) -> tuple[int, None]:
        self.requests.append(event.action_information)
        return self.status, None

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def scp() -> Iterator[FakeScp]:
    fake = FakeScp(dimse.SUCCESS)
    yield fake
    fake.stop()


def sender_to(port: int) -> DicomSender:
    endpoint = EndpointSettings(name="PACS", aet="PACS", host="127.0.0.1", port=port,
                                storage_commitment=True)
    return DicomSender(endpoint, DeliverySettings(connect_timeout=5, dimse_timeout=10),
                       ROUTER_AET)


def test_the_n_action_names_every_instance_and_the_transaction(scp: FakeScp) -> None:
    references = tuple(SopReference(CT, f"1.2.3.{n}") for n in range(1, 4))
    sender = sender_to(scp.port)
    try:
        assert sender.request_commitment(CommitmentRequest("2.25.42", references)) is None
    finally:
        sender.release()

    (request,) = scp.requests
    assert request.TransactionUID == "2.25.42"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
            for i in request.ReferencedSOPSequence] == [(r.sop_class_uid, r.sop_instance_uid)
                                                        for r in references]


def test_a_refused_n_action_says_why() -> None:
    refusing = FakeScp(dimse.PROCESSING_FAILURE)
    sender = sender_to(refusing.port)
    try:
        problem = sender.request_commitment(CommitmentRequest("2.25.43", (
            SopReference(CT, "1.2.3.4"),)))
    finally:
        sender.release()
        refusing.stop()
    assert problem == "N-ACTION refused: 0x0110 (processing failure)"


def test_a_pacs_without_storage_commitment_is_told_apart(tmp_path: Path) -> None:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(CT, SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    sender = sender_to(int(server.server_address[1]))
    try:
        problem = sender.request_commitment(CommitmentRequest("2.25.44", (
            SopReference(CT, "1.2.3.4"),)))
    finally:
        sender.release()
        server.shutdown()
    assert problem is not None
    assert "Storage Commitment" in problem


def test_the_receiver_takes_a_report_sent_with_the_scp_role(tmp_path: Path) -> None:
    taken: list[tuple[CommitmentReport, str]] = []

    def take(report: CommitmentReport, calling_aet: str) -> int:
        taken.append((report, calling_aet))
        return dimse.SUCCESS

    settings = ReceiverSettings(host="127.0.0.1", port=0, ae_title=ROUTER_AET)
    receiver = StorageSCP(settings, cast(IngestPipeline, None), incoming_dir=tmp_path / "in",
                          on_commitment_report=take)
    receiver.start()
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(StorageCommitmentPushModel, SYNTAXES)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title=ROUTER_AET,
                             ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
        assert assoc.is_established
        report = Dataset()
        report.TransactionUID = "2.25.45"
        committed, failed = Dataset(), Dataset()
        committed.ReferencedSOPClassUID, committed.ReferencedSOPInstanceUID = CT, "1.2.3.1"
        failed.ReferencedSOPClassUID, failed.ReferencedSOPInstanceUID = CT, "1.2.3.2"
        failed.FailureReason = 0x0112
        report.ReferencedSOPSequence = [committed]
        report.FailedSOPSequence = [failed]
        status, _ = assoc.send_n_event_report(report, 2, StorageCommitmentPushModel,
                                              STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE)
        assoc.release()
    finally:
        receiver.stop()

    assert status.Status == dimse.SUCCESS
    assert taken == [(CommitmentReport(
        "2.25.45", 2, (SopReference(CT, "1.2.3.1"),),
        (FailedReference(SopReference(CT, "1.2.3.2"), 0x0112),)), "PACS")]
