"""DIMSE command sets (PS3.7 section 9.3 and Annex E): group 0000 elements, always encoded in
implicit VR little endian, whatever transfer syntax the presentation context carries.

A command is held as its raw element values by tag; typed readers decode them on demand.
Building a command takes the elements' Python values and pads them as their VR requires
(UIDs with NUL, text with spaces).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

COMMAND_GROUP_LENGTH: Final = 0x0000_0000
AFFECTED_SOP_CLASS_UID: Final = 0x0000_0002
REQUESTED_SOP_CLASS_UID: Final = 0x0000_0003
COMMAND_FIELD: Final = 0x0000_0100
MESSAGE_ID: Final = 0x0000_0110
MESSAGE_ID_BEING_RESPONDED_TO: Final = 0x0000_0120
MOVE_DESTINATION: Final = 0x0000_0600
PRIORITY: Final = 0x0000_0700
COMMAND_DATA_SET_TYPE: Final = 0x0000_0800
STATUS: Final = 0x0000_0900
OFFENDING_ELEMENT: Final = 0x0000_0901
ERROR_COMMENT: Final = 0x0000_0902
ERROR_ID: Final = 0x0000_0903
AFFECTED_SOP_INSTANCE_UID: Final = 0x0000_1000
REQUESTED_SOP_INSTANCE_UID: Final = 0x0000_1001
EVENT_TYPE_ID: Final = 0x0000_1002
ATTRIBUTE_IDENTIFIER_LIST: Final = 0x0000_1005
ACTION_TYPE_ID: Final = 0x0000_1008
NUMBER_OF_REMAINING_SUBOPERATIONS: Final = 0x0000_1020
NUMBER_OF_COMPLETED_SUBOPERATIONS: Final = 0x0000_1021
NUMBER_OF_FAILED_SUBOPERATIONS: Final = 0x0000_1022
NUMBER_OF_WARNING_SUBOPERATIONS: Final = 0x0000_1023
MOVE_ORIGINATOR_AE_TITLE: Final = 0x0000_1030
MOVE_ORIGINATOR_MESSAGE_ID: Final = 0x0000_1031

NO_DATA_SET: Final = 0x0101
"""Command Data Set Type when no dataset follows the command (any other value: one does)."""
DATA_SET_PRESENT: Final = 0x0001
PRIORITY_MEDIUM: Final = 0x0000

VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"


class CommandField(IntEnum):
    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF


_UL: Final = frozenset({COMMAND_GROUP_LENGTH})
_US: Final = frozenset({
    COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_BEING_RESPONDED_TO, PRIORITY, COMMAND_DATA_SET_TYPE,
    STATUS, ERROR_ID, EVENT_TYPE_ID, ACTION_TYPE_ID, NUMBER_OF_REMAINING_SUBOPERATIONS,
    NUMBER_OF_COMPLETED_SUBOPERATIONS, NUMBER_OF_FAILED_SUBOPERATIONS,
    NUMBER_OF_WARNING_SUBOPERATIONS, MOVE_ORIGINATOR_MESSAGE_ID,
})
_AT: Final = frozenset({OFFENDING_ELEMENT, ATTRIBUTE_IDENTIFIER_LIST})
_UI: Final = frozenset({
    AFFECTED_SOP_CLASS_UID, REQUESTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID,
    REQUESTED_SOP_INSTANCE_UID,
})
_ELEMENT_HEADER: Final = struct.Struct("<HHL")
MAX_COMMAND_BYTES: Final = 64 * 1024
"""A command set is a few hundred bytes; a peer sending more is refused."""

Value = int | str | tuple[int, ...]


class CommandError(ValueError):
    """The bytes are not a valid command set (the message says what is wrong)."""


def _encode_value(tag: int, value: Value) -> bytes:
    if tag in _UL:
        if not isinstance(value, int):
            raise CommandError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) needs an integer")
        return struct.pack("<L", value)
    if tag in _US:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise CommandError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) needs a 16-bit integer")
        return struct.pack("<H", value)
    if tag in _AT:
        if not isinstance(value, tuple):
            raise CommandError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) needs a tuple of tags")
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in value)
    if not isinstance(value, str):
        raise CommandError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) needs text")
    raw = value.encode("ascii", errors="replace")
    if len(raw) % 2:
        raw += b"\0" if tag in _UI else b" "
    return raw


def encode(elements: Mapping[int, Value]) -> bytes:
    """A command set with its group length, elements in ascending tag order."""
    body = bytearray()
    for tag in sorted(elements):
        if tag >> 16 != 0 or tag == COMMAND_GROUP_LENGTH:
            raise CommandError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a command element")
        value = _encode_value(tag, elements[tag])
        body += _ELEMENT_HEADER.pack(0, tag & 0xFFFF, len(value)) + value
    return _ELEMENT_HEADER.pack(0, 0, 4) + struct.pack("<L", len(body)) + bytes(body)


@dataclass(frozen=True)
class Command:
    """A decoded command set: raw values by tag, read through the typed properties."""

    elements: Mapping[int, bytes]

    def uint(self, tag: int) -> int | None:
        raw = self.elements.get(tag)
        if raw is None:
            return None
        if tag in _UL and len(raw) == 4:
            return int(struct.unpack("<L", raw)[0])
        if len(raw) == 2:
            return int(struct.unpack("<H", raw)[0])
        raise CommandError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has {len(raw)} bytes")

    def text(self, tag: int) -> str | None:
        raw = self.elements.get(tag)
        if raw is None:
            return None
        return raw.decode("ascii", errors="replace").rstrip("\0 ").lstrip(" ")

    @property
    def command_field(self) -> int | None:
        return self.uint(COMMAND_FIELD)

    @property
    def message_id(self) -> int | None:
        return self.uint(MESSAGE_ID)

    @property
    def responded_to(self) -> int | None:
        return self.uint(MESSAGE_ID_BEING_RESPONDED_TO)

    @property
    def status(self) -> int | None:
        return self.uint(STATUS)

    @property
    def has_data_set(self) -> bool:
        kind = self.uint(COMMAND_DATA_SET_TYPE)
        return kind is not None and kind != NO_DATA_SET

    @property
    def affected_sop_class_uid(self) -> str | None:
        return self.text(AFFECTED_SOP_CLASS_UID)

    @property
    def affected_sop_instance_uid(self) -> str | None:
        return self.text(AFFECTED_SOP_INSTANCE_UID)

    @property
    def error_comment(self) -> str | None:
        return self.text(ERROR_COMMENT)

    @property
    def requested_sop_class_uid(self) -> str | None:
        return self.text(REQUESTED_SOP_CLASS_UID)

    @property
    def requested_sop_instance_uid(self) -> str | None:
        return self.text(REQUESTED_SOP_INSTANCE_UID)

    @property
    def event_type_id(self) -> int | None:
        return self.uint(EVENT_TYPE_ID)

    @property
    def action_type_id(self) -> int | None:
        return self.uint(ACTION_TYPE_ID)


def decode(raw: bytes | bytearray | memoryview) -> Command:
    """Decode a command set; raise :class:`CommandError` unless every element is a whole
    group-0000 element (a group length that disagrees with the bytes is ignored, as
    DCMTK does: the elements are what count)."""
    view = memoryview(raw)
    if len(view) > MAX_COMMAND_BYTES:
        raise CommandError(f"a command set of {len(view)} bytes is too long")
    elements: dict[int, bytes] = {}
    offset = 0
    previous = -1
    while offset < len(view):
        if len(view) - offset < _ELEMENT_HEADER.size:
            raise CommandError("the command set ends inside an element header")
        group, element, length = _ELEMENT_HEADER.unpack_from(view, offset)
        offset += _ELEMENT_HEADER.size
        if group != 0:
            raise CommandError(f"element ({group:04X},{element:04X}) outside group 0000")
        if length > len(view) - offset:
            raise CommandError(f"element (0000,{element:04X}) runs past the command set")
        tag = element
        if tag <= previous:
            raise CommandError("command elements are not in ascending order")
        previous = tag
        elements[tag] = bytes(view[offset:offset + length])
        offset += length
    if COMMAND_FIELD not in elements:
        raise CommandError("the command set has no Command Field")
    return Command(elements)


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str, *,
               priority: int = PRIORITY_MEDIUM, move_originator: tuple[str, int] | None = None,
               ) -> bytes:
    elements: dict[int, Value] = {
        AFFECTED_SOP_CLASS_UID: sop_class_uid,
        COMMAND_FIELD: CommandField.C_STORE_RQ,
        MESSAGE_ID: message_id,
        PRIORITY: priority,
        COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
        AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
    }
    if move_originator is not None:
        elements[MOVE_ORIGINATOR_AE_TITLE] = move_originator[0]
        elements[MOVE_ORIGINATOR_MESSAGE_ID] = move_originator[1]
    return encode(elements)


def c_store_rsp(responded_to: int, sop_class_uid: str, sop_instance_uid: str, status: int,
                error_comment: str | None = None) -> bytes:
    elements: dict[int, Value] = {
        AFFECTED_SOP_CLASS_UID: sop_class_uid,
        COMMAND_FIELD: CommandField.C_STORE_RSP,
        MESSAGE_ID_BEING_RESPONDED_TO: responded_to,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        STATUS: status,
        AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
    }
    if error_comment:
        elements[ERROR_COMMENT] = error_comment
    return encode(elements)


def c_echo_rq(message_id: int) -> bytes:
    return encode({
        AFFECTED_SOP_CLASS_UID: VERIFICATION_SOP_CLASS,
        COMMAND_FIELD: CommandField.C_ECHO_RQ,
        MESSAGE_ID: message_id,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET,
    })


def c_echo_rsp(responded_to: int, status: int) -> bytes:
    return encode({
        AFFECTED_SOP_CLASS_UID: VERIFICATION_SOP_CLASS,
        COMMAND_FIELD: CommandField.C_ECHO_RSP,
        MESSAGE_ID_BEING_RESPONDED_TO: responded_to,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        STATUS: status,
    })


def n_action_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str,
                action_type_id: int) -> bytes:
    """N-ACTION-RQ (PS3.7 10.3.4): the Action Information follows as a dataset."""
    return encode({
        REQUESTED_SOP_CLASS_UID: sop_class_uid,
        COMMAND_FIELD: CommandField.N_ACTION_RQ,
        MESSAGE_ID: message_id,
        COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
        REQUESTED_SOP_INSTANCE_UID: sop_instance_uid,
        ACTION_TYPE_ID: action_type_id,
    })


def _n_response(field: int, type_tag: int, responded_to: int, sop_class_uid: str,
                sop_instance_uid: str, status: int, type_id: int | None,
                error_comment: str | None) -> bytes:
    """A DIMSE-N response without a dataset: the Affected SOP Class and Instance UID always
    there (Orthanc, for one, refuses a response without them)."""
    elements: dict[int, Value] = {
        AFFECTED_SOP_CLASS_UID: sop_class_uid,
        COMMAND_FIELD: field,
        MESSAGE_ID_BEING_RESPONDED_TO: responded_to,
        COMMAND_DATA_SET_TYPE: NO_DATA_SET,
        STATUS: status,
        AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
    }
    if type_id is not None:
        elements[type_tag] = type_id
    if error_comment:
        elements[ERROR_COMMENT] = error_comment
    return encode(elements)


def n_action_rsp(responded_to: int, sop_class_uid: str, sop_instance_uid: str, status: int,
                 action_type_id: int | None = None, error_comment: str | None = None) -> bytes:
    """N-ACTION-RSP without Action Reply (what a Storage Commitment SCP answers)."""
    return _n_response(CommandField.N_ACTION_RSP, ACTION_TYPE_ID, responded_to, sop_class_uid,
                       sop_instance_uid, status, action_type_id, error_comment)


def n_event_report_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str,
                      event_type_id: int) -> bytes:
    """N-EVENT-REPORT-RQ (PS3.7 10.3.1): the Event Information follows as a dataset."""
    return encode({
        AFFECTED_SOP_CLASS_UID: sop_class_uid,
        COMMAND_FIELD: CommandField.N_EVENT_REPORT_RQ,
        MESSAGE_ID: message_id,
        COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
        AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
        EVENT_TYPE_ID: event_type_id,
    })


def n_event_report_rsp(responded_to: int, sop_class_uid: str, sop_instance_uid: str,
                       status: int, event_type_id: int | None = None,
                       error_comment: str | None = None) -> bytes:
    """N-EVENT-REPORT-RSP without Event Reply."""
    return _n_response(CommandField.N_EVENT_REPORT_RSP, EVENT_TYPE_ID, responded_to,
                       sop_class_uid, sop_instance_uid, status, event_type_id, error_comment)
