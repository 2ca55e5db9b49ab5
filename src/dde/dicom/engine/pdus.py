"""Upper-layer PDUs (PS3.8 section 9.3): framing, P-DATA-TF with its presentation data
values, and the fixed-form A-RELEASE and A-ABORT PDUs.

Every PDU is a 6-byte header (type, reserved, 32-bit big-endian length) and a body. The
length is checked against a limit *before* the body is read, so a peer cannot make us
buffer more than we allow. A-ASSOCIATE PDUs are encoded and decoded in ``negotiation``.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class PduType(IntEnum):
    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


PDU_HEADER: Final = struct.Struct(">BxL")
PDV_HEADER: Final = struct.Struct(">LBB")
"""A presentation data value item: its length (context id and control byte included), the
presentation context id and the message control header."""
P_DATA_OVERHEAD: Final = PDU_HEADER.size + PDV_HEADER.size
"""Bytes before a PDV's data in a P-DATA-TF carrying one PDV."""

COMMAND: Final = 0x01
"""Message control header bit: this fragment belongs to a command (else to a dataset)."""
LAST: Final = 0x02
"""Message control header bit: the last fragment of its command or dataset."""

ABORT_SOURCE_USER: Final = 0x00
ABORT_SOURCE_PROVIDER: Final = 0x02
ABORT_REASON_NOT_SPECIFIED: Final = 0x00
ABORT_REASON_UNEXPECTED_PDU: Final = 0x02
ABORT_REASON_UNRECOGNIZED_PDU_PARAMETER: Final = 0x04
ABORT_REASON_INVALID_PDU_PARAMETER: Final = 0x06


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol (the association must be aborted)."""


class PduTooLarge(ProtocolError):
    """A PDU announced a body longer than allowed (never read)."""


def header(pdu_type: int, length: int) -> bytes:
    return PDU_HEADER.pack(pdu_type, length)


def p_data_header(context_id: int, control: int, data_length: int) -> bytes:
    """The 12 bytes before a PDV's data, in a P-DATA-TF that carries that one PDV."""
    return (PDU_HEADER.pack(PduType.P_DATA_TF, PDV_HEADER.size + data_length)
            + PDV_HEADER.pack(2 + data_length, context_id, control))


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    return p_data_header(context_id, control, len(data)) + data


A_RELEASE_RQ: Final = header(PduType.A_RELEASE_RQ, 4) + bytes(4)
A_RELEASE_RP: Final = header(PduType.A_RELEASE_RP, 4) + bytes(4)


def a_abort(source: int = ABORT_SOURCE_USER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    return header(PduType.A_ABORT, 4) + bytes((0, 0, source, reason))


@dataclass(frozen=True)
class Pdv:
    context_id: int
    control: int
    data: memoryview

    @property
    def is_command(self) -> bool:
        return bool(self.control & COMMAND)

    @property
    def is_last(self) -> bool:
        return bool(self.control & LAST)


def split_pdvs(body: bytes | bytearray | memoryview) -> list[Pdv]:
    """The PDVs of a P-DATA-TF body; :class:`ProtocolError` if an item's length does not fit
    the body (or the body holds none)."""
    view = memoryview(body)
    pdvs: list[Pdv] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < PDV_HEADER.size:
            raise ProtocolError("a P-DATA-TF ends inside a PDV header")
        length, context_id, control = PDV_HEADER.unpack_from(view, offset)
        if length < 2 or length - 2 > len(view) - offset - PDV_HEADER.size:
            raise ProtocolError(f"a PDV item length of {length} does not fit its P-DATA-TF")
        start = offset + PDV_HEADER.size
        pdvs.append(Pdv(context_id, control, view[start:start + length - 2]))
        offset = start + length - 2
    if not pdvs:
        raise ProtocolError("a P-DATA-TF without any PDV")
    return pdvs


@dataclass(frozen=True)
class Pdu:
    type: int
    body: bytes


async def read_pdu(reader: asyncio.StreamReader, limit: int,
                   control_limit: int | None = None) -> Pdu:
    """The next PDU; its announced length is checked against ``limit`` (a P-DATA-TF) or
    ``control_limit`` (any other PDU; default ``limit``) before its body is read. Raises
    :class:`ProtocolError` for an unknown type, :class:`PduTooLarge`, and
    ``asyncio.IncompleteReadError`` when the peer closes mid-PDU. The caller bounds the
    wait (every read of the engine is under a timeout)."""
    raw = await reader.readexactly(PDU_HEADER.size)
    pdu_type, length = PDU_HEADER.unpack(raw)
    if pdu_type not in PduType.__members__.values():
        raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}")
    allowed = limit if pdu_type == PduType.P_DATA_TF or control_limit is None \
        else control_limit
    if length > allowed:
        raise PduTooLarge(f"a {PduType(pdu_type).name} of {length} bytes exceeds {allowed}")
    body = await reader.readexactly(length) if length else b""
    return Pdu(pdu_type, body)
