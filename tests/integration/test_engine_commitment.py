"""The engine's storage commitment against pynetdicom, an independent implementation: the
router's N-ACTION (sender and requestor) read by a pynetdicom Storage Commitment SCP, and
a pynetdicom SCP's N-EVENT-REPORT (on an association it opens with the SCP role, as
Orthanc does) taken by the router's receiver. An SCP that reports on the N-ACTION's own
association (before its response, or while the router releases) speaks raw PDUs here."""

from __future__ import annotations

import socket
import threading
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
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE,
    CommitmentReport,
    CommitmentRequest,
    FailedReference,
    SopReference,
    decode_action_information,
    encode_event_information,
)
from dde.dicom.engine import commands, pdus
from dde.dicom.engine.acceptance import agree, decode_proposal
from dde.dicom.engine.commands import CommandField
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


class PduReader:
    """Whole PDUs from a raw socket (a buffer keeps what one recv read past a PDU)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def next(self) -> tuple[int, bytes]:
        while len(self.buffer) < 6 or \
                len(self.buffer) < 6 + int.from_bytes(self.buffer[2:6], "big"):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data
        length = 6 + int.from_bytes(self.buffer[2:6], "big")
        pdu, self.buffer = bytes(self.buffer[:length]), self.buffer[length:]
        return pdu[0], pdu[6:]

    def message(self) -> tuple[commands.Command, bytes, int]:
        """The next command and its dataset (empty when it has none), and its context."""
        command, dataset, context = bytearray(), bytearray(), 0
        while True:
            kind, body = self.next()
            assert kind == pdus.PduType.P_DATA_TF, kind
            for pdv in pdus.split_pdvs(body):
                context = pdv.context_id
                (command if pdv.is_command else dataset).extend(pdv.data)
                if pdv.is_command and pdv.is_last:
                    decoded = commands.decode(command)
                    if not decoded.has_data_set:
                        return decoded, b"", context
                elif not pdv.is_command and pdv.is_last:
                    return commands.decode(command), bytes(dataset), context


def reporting_scp(server: socket.socket, report_first: bool, answers: list[int]) -> None:
    """One association of a Storage Commitment SCP that reports on the N-ACTION's own
    association: before its N-ACTION-RSP (``report_first``) or after it, while the
    requestor releases. The status of the N-EVENT-REPORT-RSP goes to ``answers``."""
    conn, _ = server.accept()
    with conn:
        reader = PduReader(conn)
        _, body = reader.next()
        agreement = agree(decode_proposal(body), max_pdu=16384,
                          preferred=(ExplicitVRLittleEndian,), sender_rest=True)
        conn.sendall(agreement.answer)
        action, dataset, context = reader.message()
        syntax = agreement.accepted[context][1]
        request = decode_action_information(dataset, syntax)
        report = encode_event_information(
            CommitmentReport(request.transaction_uid, 1, request.references, ()), syntax)
        event = pdus.p_data(context, pdus.COMMAND | pdus.LAST, commands.n_event_report_rq(
            1, STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
            STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE, 1)) + pdus.p_data(
            context, pdus.LAST, report)
        response = pdus.p_data(context, pdus.COMMAND | pdus.LAST, commands.n_action_rsp(
            action.message_id or 0, STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
            STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE, dimse.SUCCESS, 1))
        conn.sendall(event if report_first else response + event)
        while True:
            kind, body = reader.next()
            if kind == pdus.PduType.A_RELEASE_RQ:
                if answers:
                    conn.sendall(pdus.A_RELEASE_RP)
                    return
                continue
            (pdv,) = pdus.split_pdvs(body)
            answered = commands.decode(pdv.data)
            assert answered.command_field == CommandField.N_EVENT_REPORT_RSP
            answers.append(answered.status or 0)
            if report_first:
                conn.sendall(response)
            else:  # the A-RELEASE-RQ came before the report was read
                conn.sendall(pdus.A_RELEASE_RP)
                return


@pytest.mark.parametrize("report_first", [True, False], ids=["before-response", "at-release"])
def test_a_report_on_the_n_actions_association_is_taken_and_answered(
        report_first: bool) -> None:
    taken: list[CommitmentReport] = []

    def take(report: CommitmentReport) -> int:
        taken.append(report)
        return dimse.SUCCESS

    answers: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        scp = threading.Thread(target=reporting_scp, args=(server, report_first, answers),
                               daemon=True)
        scp.start()
        endpoint = EndpointSettings(name="PACS", aet="PACS", host="127.0.0.1",
                                    port=server.getsockname()[1], storage_commitment=True)
        sender = DicomSender(endpoint, DeliverySettings(connect_timeout=5, dimse_timeout=10),
                             ROUTER_AET, on_report=take)
        try:
            references = (SopReference(CT, "1.2.3.1"),)
            assert sender.request_commitment(CommitmentRequest("2.25.46", references)) is None
        finally:
            sender.release()
        scp.join(10)

    assert answers == [dimse.SUCCESS]
    assert taken == [CommitmentReport("2.25.46", 1, (SopReference(CT, "1.2.3.1"),), ())]
