"""A-ASSOCIATE negotiation, acceptor side: what a requestor proposes, which presentation
contexts we accept with which transfer syntax, and the A-ASSOCIATE-AC/RJ we answer
(pynetdicom's PDU classes do the byte-level encoding and decoding).

Accepted: Verification, the Storage Commitment Push Model (the router receives the
N-EVENT-REPORTs of the commitments it requested), and every storage SOP class, known or
private (any abstract syntax that is not a known non-storage service such as query/retrieve
or worklist). Of the transfer syntaxes a context proposes, the first in the receiver's
preference order is taken (:func:`dde.dicom.transfer_syntaxes.order_transfer_syntaxes`); a
context with none left is rejected. SCP/SCU role selection is answered for the Storage
Commitment Push Model only: a PACS reporting a commitment invokes N-EVENT-REPORT, the SCP's
operation, so it proposes the SCP role, which is accepted (the SCU role is refused: the
router is no commitment SCP); for other SOP classes the item is not answered (the default
roles apply). A report is taken even when the requestor asked for no role (many do not).
SOP class extended negotiation items are not answered (no extended behaviour is agreed).
An asynchronous operations window is answered 1/1. User identity is accepted without a
server response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import uid_to_service_class

from dde.dicom.commitment import STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS
from dde.dicom.engine import pdus
from dde.dicom.engine.commands import VERIFICATION_SOP_CLASS
from dde.dicom.engine.negotiation import implementation_items
from dde.dicom.engine.pdus import ProtocolError
from dde.dicom.transfer_syntaxes import order_transfer_syntaxes
from dde.dicom.uids import APPLICATION_CONTEXT_NAME

_STORAGE_SERVICES: Final = frozenset({"StorageServiceClass", "NonPatientObjectStorageServiceClass",
                                      "ServiceClass"})
"""pynetdicom's service classes of storage SOP classes (colour palettes, hanging protocols
and other non-patient objects included), and of UIDs it does not know."""


class ContextResult(IntEnum):
    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class RejectResult(IntEnum):
    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason(IntEnum):
    NO_REASON_GIVEN = 1
    APPLICATION_CONTEXT_NOT_SUPPORTED = 2
    CALLING_AE_NOT_RECOGNISED = 3
    CALLED_AE_NOT_RECOGNISED = 7


@dataclass(frozen=True)
class Rejection:
    result: RejectResult
    source: RejectSource
    reason: int

    def encode(self) -> bytes:
        return pdus.header(pdus.PduType.A_ASSOCIATE_RJ, 4) + bytes(
            (0, self.result, self.source, self.reason))


LOCAL_LIMIT_EXCEEDED: Final = Rejection(RejectResult.TRANSIENT,
                                        RejectSource.SERVICE_PROVIDER_PRESENTATION, 2)
"""Too many associations (the presentation provider's reason 2)."""
PROTOCOL_VERSION_NOT_SUPPORTED: Final = Rejection(RejectResult.PERMANENT,
                                                  RejectSource.SERVICE_PROVIDER_ACSE, 2)
"""The ACSE provider's reason 2."""
APPLICATION_CONTEXT_NOT_SUPPORTED: Final = Rejection(
    RejectResult.PERMANENT, RejectSource.SERVICE_USER,
    RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED)


@dataclass(frozen=True)
class Proposal:
    """An A-ASSOCIATE-RQ as the acceptor reads it."""

    calling_aet: str
    called_aet: str
    application_context: str
    protocol_version: int
    contexts: tuple[tuple[int, str, tuple[str, ...]], ...]
    """(context id, abstract syntax, proposed transfer syntaxes)."""
    max_pdu: int
    """The largest P-DATA-TF the requestor takes (0: no limit)."""
    asks_async_window: bool
    primitive: Any
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    """SCP/SCU role selection items: SOP class -> (SCU role, SCP role) proposed."""


@dataclass(frozen=True)
class Agreement:
    """The contexts accepted: id -> (abstract syntax, transfer syntax)."""

    accepted: dict[int, tuple[str, str]]
    answer: bytes
    """The A-ASSOCIATE-AC PDU."""


def decode_proposal(body: bytes) -> Proposal:
    """The A-ASSOCIATE-RQ body (without its 6-byte header); :class:`ProtocolError` if it
    cannot be decoded."""
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(pdus.header(pdus.PduType.A_ASSOCIATE_RQ, len(body)) + body)
        primitive = pdu.to_primitive()
        contexts = tuple(
            (int(c.context_id or 0), str(c.abstract_syntax or "").strip(),
             tuple(str(t).strip() for t in c.transfer_syntax))
            for c in primitive.presentation_context_definition_list)
    except Exception as exc:  # pynetdicom raises assorted errors on malformed items
        raise ProtocolError(f"an A-ASSOCIATE-RQ that cannot be decoded: {exc}") from None
    max_pdu = 0
    asks_window = False
    roles: dict[str, tuple[bool, bool]] = {}
    for item in primitive.user_information or []:
        if isinstance(item, MaximumLengthNotification):
            max_pdu = int(item.maximum_length_received or 0)
        elif isinstance(item, AsynchronousOperationsWindowNegotiation):
            asks_window = True
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
            roles[str(item.sop_class_uid).strip()] = (bool(item.scu_role),
                                                      bool(item.scp_role))
    return Proposal(
        calling_aet=str(primitive.calling_ae_title or "").strip(),
        called_aet=str(primitive.called_ae_title or "").strip(),
        application_context=str(primitive.application_context_name or "").strip(),
        protocol_version=int(pdu.protocol_version or 0),
        contexts=contexts, max_pdu=max_pdu, asks_async_window=asks_window,
        primitive=primitive, roles=roles)


def is_acceptable_abstract_syntax(uid: str) -> bool:
    """Verification, the Storage Commitment Push Model (its reports), or a storage SOP
    class (known, or unknown to the router: private)."""
    if uid in (VERIFICATION_SOP_CLASS, STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS):
        return True
    if not uid or len(uid) > 64:
        return False
    return uid_to_service_class(uid).__name__ in _STORAGE_SERVICES


def _role_answers(proposal: Proposal, accepted: dict[int, tuple[str, str]]) -> list[Any]:
    """The role selection answers: the SCP role of the Storage Commitment Push Model when
    it was asked for (and its context accepted), never the SCU role."""
    roles = proposal.roles.get(STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS)
    if roles is None or not roles[1] or not any(abstract == STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS
                                for abstract, _ in accepted.values()):
        return []
    answer = SCP_SCU_RoleSelectionNegotiation()
    answer.sop_class_uid = STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS
    answer.scu_role = False
    answer.scp_role = roles[1]
    return [answer]


def agree(proposal: Proposal, *, max_pdu: int, preferred: Sequence[str],
          sender_rest: bool) -> Agreement:
    """Choose the accepted contexts and encode the A-ASSOCIATE-AC."""
    accepted: dict[int, tuple[str, str]] = {}
    results = []
    for ident, abstract, proposed in proposal.contexts:
        context = PresentationContext()
        context.context_id = ident
        context.abstract_syntax = abstract or VERIFICATION_SOP_CLASS
        choice = order_transfer_syntaxes(proposed, preferred, sender_rest)
        if not is_acceptable_abstract_syntax(abstract):
            context.result = ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
        elif not choice:
            context.result = ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
        elif ident in accepted:
            context.result = ContextResult.NO_REASON  # a duplicate context id
        else:
            context.result = ContextResult.ACCEPTANCE
            accepted[ident] = (abstract, choice[0])
        # the transfer syntax sub-item is there even for a rejected context (ignored)
        context.transfer_syntax = [choice[0] if choice else
                                   (proposed[0] if proposed else ImplicitVRLittleEndian)]
        results.append(context)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = proposal.primitive.calling_ae_title
    primitive.called_ae_title = proposal.primitive.called_ae_title
    primitive.result = 0
    items = implementation_items(max_pdu)
    if proposal.asks_async_window:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        items.append(window)
    items.extend(_role_answers(proposal, accepted))
    primitive.user_information = items
    primitive.presentation_context_definition_results_list = results
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return Agreement(accepted, bytes(pdu.encode()))
