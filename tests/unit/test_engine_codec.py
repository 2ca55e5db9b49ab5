"""The engine's command-set codec and PDU framing, checked against pynetdicom's and
pydicom's independent encoders and decoders."""

from __future__ import annotations

import asyncio
import io

import pytest
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from tests.support.unitkit import run_coroutine

from dde.dicom import status as dimse
from dde.dicom.engine import commands, pdus
from dde.dicom.engine.commands import CommandError, CommandField
from dde.dicom.engine.negotiation import AssociationRequest, ProposedContext, encode_request


def pynetdicom_c_store_command(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = 0
    primitive.DataSet = io.BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    encoded = bytearray()
    for pdv in message.encode_msg(1, 16384):
        for value in pdv.presentation_data_value_list:
            if value[1][0] & 0x01:
                encoded += value[1][1:]
    return bytes(encoded)


def test_a_c_store_request_is_byte_identical_to_pynetdicoms() -> None:
    ours = commands.c_store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")
    assert ours == pynetdicom_c_store_command(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")


def test_a_response_decodes_with_pydicom_and_back_with_ours() -> None:
    raw = commands.c_store_rsp(9, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", dimse.CANNOT_UNDERSTAND,
                               "odd fragment")
    ds = read_dataset(io.BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.Status == dimse.CANNOT_UNDERSTAND
    assert ds.ErrorComment == "odd fragment"
    assert ds.MessageIDBeingRespondedTo == 9
    command = commands.decode(raw)
    assert command.command_field == CommandField.C_STORE_RSP
    assert command.status == dimse.CANNOT_UNDERSTAND
    assert command.error_comment == "odd fragment"
    assert command.affected_sop_instance_uid == "1.2.3"  # NUL padding removed
    assert not command.has_data_set


@pytest.mark.parametrize("damage", [
    lambda raw: raw[:-1],                                  # cut inside the last value
    lambda raw: raw[:5],                                   # cut inside a header
    lambda raw: b"\x08\x00\x16\x00\x02\x00\x00\x001\x00",  # not group 0000
    lambda raw: raw[:12] + raw[12 + 26:] + raw[12:12 + 26],  # elements out of order
])
def test_damaged_command_sets_are_refused(damage: object) -> None:
    raw = commands.c_echo_rq(3)
    with pytest.raises(CommandError):
        commands.decode(damage(raw))  # type: ignore[operator]


def test_a_command_without_command_field_is_refused() -> None:
    raw = commands.encode({commands.MESSAGE_ID: 1})
    with pytest.raises(CommandError, match="Command Field"):
        commands.decode(raw)


def test_values_of_the_wrong_kind_are_refused_when_encoding() -> None:
    with pytest.raises(CommandError):
        commands.encode({commands.MESSAGE_ID: "one"})
    with pytest.raises(CommandError):
        commands.encode({commands.MESSAGE_ID: 0x10000})
    with pytest.raises(CommandError):
        commands.encode({0x0008_0016: "1.2"})


def test_pdvs_split_and_their_lengths_are_checked() -> None:
    body = pdus.p_data(1, pdus.COMMAND | pdus.LAST, b"abcd")[6:] + \
        pdus.p_data(3, 0, b"xy")[6:]
    first, second = pdus.split_pdvs(body)
    assert (first.context_id, first.is_command, first.is_last, bytes(first.data)) == \
        (1, True, True, b"abcd")
    assert (second.context_id, second.is_command, second.is_last, bytes(second.data)) == \
        (3, False, False, b"xy")
    for broken in (body[:-1], b"\x00\x00\x00\x01\x01\x00", b"", b"\x00\x00"):
        with pytest.raises(pdus.ProtocolError):
            pdus.split_pdvs(broken)


def read(data: bytes, limit: int) -> pdus.Pdu:
    async def go() -> pdus.Pdu:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await pdus.read_pdu(reader, limit)
    result: pdus.Pdu = run_coroutine(go())
    return result


def test_a_pdu_longer_than_the_limit_is_refused_before_its_body_is_read() -> None:
    announced = pdus.header(pdus.PduType.P_DATA_TF, 1 << 30)  # no body follows at all
    with pytest.raises(pdus.PduTooLarge):
        read(announced, limit=1 << 20)
    with pytest.raises(pdus.ProtocolError, match="unknown PDU type"):
        read(b"\x09\x00\x00\x00\x00\x00", limit=10)
    assert read(pdus.A_RELEASE_RQ, 10) == pdus.Pdu(pdus.PduType.A_RELEASE_RQ, bytes(4))
    with pytest.raises(asyncio.IncompleteReadError):
        read(pdus.A_RELEASE_RQ[:-1], 10)


def test_the_association_request_decodes_with_pynetdicom() -> None:
    request = AssociationRequest("THEM", "US", [
        ProposedContext("1.2.840.10008.5.1.4.1.1.2", ("1.2.840.10008.1.2.1",)),
        ProposedContext("1.2.3.4.5.6.7", ("1.2.840.10008.1.2",)),  # a private SOP class
    ], user_identity=("user", "secret"))
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(encode_request(request))
    primitive = pdu.to_primitive()
    assert primitive.called_ae_title == "THEM"
    assert primitive.calling_ae_title == "US"
    contexts = primitive.presentation_context_definition_list
    assert [(c.context_id, c.abstract_syntax) for c in contexts] == [
        (1, "1.2.840.10008.5.1.4.1.1.2"), (3, "1.2.3.4.5.6.7")]
    kinds = {type(item).__name__ for item in primitive.user_information}
    assert {"MaximumLengthNotification", "ImplementationClassUIDNotification",
            "UserIdentityNegotiation"} <= kinds
