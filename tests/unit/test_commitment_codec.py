"""Storage commitment on the wire: N-ACTION-RQ/RSP and N-EVENT-REPORT-RQ/RSP command sets
(checked against pynetdicom's encoder and pydicom's decoder), the Action and Event
Information datasets in both little-endian syntaxes, and the role selection answer."""

from __future__ import annotations

import io

import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import N_ACTION_RQ, N_EVENT_REPORT_RSP
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

from dde.dicom import status as dimse
from dde.dicom.commitment import (
    EVENT_FAILURES_EXIST,
    REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE,
    CommitmentDataError,
    CommitmentReport,
    CommitmentRequest,
    FailedReference,
    FailureReason,
    SopReference,
    decode_action_information,
    decode_event_information,
    describe_failure,
    encode_action_information,
    encode_event_information,
    new_transaction_uid,
)
from dde.dicom.engine import commands, event_reports, pdus
from dde.dicom.engine.acceptance import agree, decode_proposal
from dde.dicom.engine.commands import CommandField
from dde.dicom.engine.negotiation import AssociationRequest, ProposedContext, encode_request

CLASS = STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS
INSTANCE = STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE
CT = "1.2.840.10008.5.1.4.1.1.2"


def command_bytes(message: object) -> bytes:
    encoded = bytearray()
    for pdv in message.encode_msg(1, 16384):  # type: ignore[attr-defined]
        for value in pdv.presentation_data_value_list:
            if value[1][0] & 0x01:
                encoded += value[1][1:]
    return bytes(encoded)


def test_an_n_action_request_is_byte_identical_to_pynetdicoms() -> None:
    primitive = N_ACTION()
    primitive.MessageID = 5
    primitive.RequestedSOPClassUID = CLASS
    primitive.RequestedSOPInstanceUID = INSTANCE
    primitive.ActionTypeID = REQUEST_STORAGE_COMMITMENT
    primitive.ActionInformation = io.BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    message = N_ACTION_RQ()
    message.primitive_to_message(primitive)

    ours = commands.n_action_rq(5, CLASS, INSTANCE, REQUEST_STORAGE_COMMITMENT)

    assert ours == command_bytes(message)
    decoded = commands.decode(ours)
    assert decoded.command_field == CommandField.N_ACTION_RQ and decoded.has_data_set
    assert (decoded.requested_sop_class_uid, decoded.requested_sop_instance_uid,
            decoded.action_type_id, decoded.message_id) == (CLASS, INSTANCE, 1, 5)


def test_an_n_event_report_response_is_byte_identical_to_pynetdicoms() -> None:
    primitive = N_EVENT_REPORT()
    primitive.MessageIDBeingRespondedTo = 9
    primitive.AffectedSOPClassUID = CLASS
    primitive.AffectedSOPInstanceUID = INSTANCE
    primitive.EventTypeID = EVENT_FAILURES_EXIST
    primitive.Status = dimse.SUCCESS
    message = N_EVENT_REPORT_RSP()
    message.primitive_to_message(primitive)

    ours = commands.n_event_report_rsp(9, CLASS, INSTANCE, dimse.SUCCESS, EVENT_FAILURES_EXIST)

    assert ours == command_bytes(message)


def test_n_action_response_and_n_event_report_request_decode_with_pydicom() -> None:
    for raw, field in ((commands.n_action_rsp(3, CLASS, INSTANCE, dimse.SUCCESS, 1),
                        CommandField.N_ACTION_RSP),
                       (commands.n_event_report_rq(4, CLASS, INSTANCE, 1),
                        CommandField.N_EVENT_REPORT_RQ)):
        dataset = read_dataset(io.BytesIO(raw), True, True)
        assert dataset.CommandField == field
        assert dataset.AffectedSOPClassUID == CLASS
        assert dataset.AffectedSOPInstanceUID == INSTANCE
        decoded = commands.decode(raw)
        assert decoded.command_field == field


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_action_and_event_information_round_trip(syntax: str) -> None:
    a, b = SopReference(CT, "1.2.3.1"), SopReference(CT, "1.2.3.2")
    request = CommitmentRequest(new_transaction_uid(), (a, b))
    assert decode_action_information(encode_action_information(request, syntax),
                                     syntax) == request
    report = CommitmentReport(request.transaction_uid, EVENT_FAILURES_EXIST, (a,),
                              (FailedReference(b, FailureReason.NO_SUCH_OBJECT_INSTANCE),))
    raw = encode_event_information(report, syntax)
    assert decode_event_information(raw, syntax, EVENT_FAILURES_EXIST) == report
    dataset = read_dataset(io.BytesIO(raw), syntax == ImplicitVRLittleEndian, True)
    assert dataset.FailedSOPSequence[0].FailureReason == 0x0112


def test_a_transaction_uid_is_a_uuid_uid() -> None:
    uid = new_transaction_uid()
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid != new_transaction_uid()


def test_event_information_without_a_transaction_uid_is_refused() -> None:
    raw = encode_action_information(CommitmentRequest("1.2", ()), ExplicitVRLittleEndian)
    with pytest.raises(CommitmentDataError):
        decode_event_information(raw.replace(b"1.2", b"\0\0\0"), ExplicitVRLittleEndian, 1)
    with pytest.raises(CommitmentDataError):
        decode_event_information(b"\x08\x00", ExplicitVRLittleEndian, 1)


def test_failure_reasons_are_named() -> None:
    assert describe_failure(0x0112) == "0x0112 (no such object instance)"
    assert describe_failure(0x0999) == "0x0999 (unknown failure reason)"
    assert describe_failure(None) == "no failure reason given"


def test_an_event_report_is_handed_over_and_answered() -> None:
    report = CommitmentReport("1.2.3", 1, (SopReference(CT, "1.2.3.1"),), ())
    raw = encode_event_information(report, ExplicitVRLittleEndian)
    command = commands.decode(commands.n_event_report_rq(7, CLASS, INSTANCE, 1))
    taken: list[CommitmentReport] = []

    def take(got: CommitmentReport) -> int:
        taken.append(got)
        return dimse.SUCCESS

    answer = commands.decode(event_reports.answer(command, raw, ExplicitVRLittleEndian, take,
                                                  "PACS"))

    assert taken == [report]
    assert answer.command_field == CommandField.N_EVENT_REPORT_RSP
    assert (answer.status, answer.responded_to, answer.affected_sop_class_uid,
            answer.affected_sop_instance_uid) == (dimse.SUCCESS, 7, CLASS, INSTANCE)
    broken = event_reports.answer(command, b"\x08", ExplicitVRLittleEndian, take, "PACS")
    assert commands.decode(broken).status == dimse.PROCESSING_FAILURE
    other = commands.decode(commands.n_event_report_rq(8, CT, "1.2", 1))
    assert commands.decode(event_reports.answer(other, raw, ExplicitVRLittleEndian, take,
                                                "PACS")).status == dimse.NO_SUCH_SOP_CLASS
    assert len(taken) == 1


def role_request(scu: bool, scp: bool) -> bytes:
    """An A-ASSOCIATE-RQ body proposing storage commitment with a role selection item."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    raw = encode_request(AssociationRequest("ROUTER", "PACS", [
        ProposedContext(CLASS, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        ProposedContext(CT, (ExplicitVRLittleEndian,))]))
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(raw)
    primitive = pdu.to_primitive()
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CLASS
    role.scu_role, role.scp_role = scu, scp
    primitive.user_information.append(role)
    again = A_ASSOCIATE_RQ()
    again.from_primitive(primitive)
    return bytes(again.encode())[pdus.PDU_HEADER.size:]


def roles_answered(answer: bytes) -> dict[str, tuple[bool, bool]]:
    pdu = A_ASSOCIATE_AC()
    pdu.decode(answer)
    return {str(item.sop_class_uid): (bool(item.scu_role), bool(item.scp_role))
            for item in pdu.to_primitive().user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}


def test_the_scp_role_of_storage_commitment_is_accepted_and_its_context_too() -> None:
    proposal = decode_proposal(role_request(scu=True, scp=True))
    assert proposal.roles == {CLASS: (True, True)}

    agreement = agree(proposal, max_pdu=16384, preferred=(ExplicitVRLittleEndian,),
                      sender_rest=True)

    assert agreement.accepted[1] == (CLASS, ExplicitVRLittleEndian)
    assert roles_answered(agreement.answer) == {CLASS: (False, True)}


def test_no_role_is_answered_when_only_the_scu_role_is_asked() -> None:
    agreement = agree(decode_proposal(role_request(scu=True, scp=False)), max_pdu=16384,
                      preferred=(ExplicitVRLittleEndian,), sender_rest=True)

    assert agreement.accepted[1][0] == CLASS
    assert roles_answered(agreement.answer) == {}
