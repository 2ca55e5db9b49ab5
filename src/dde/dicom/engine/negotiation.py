"""A-ASSOCIATE negotiation, requestor side: the request we send and what the acceptor's
answer means (pynetdicom's PDU classes do the byte-level encoding and decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

from dde.dicom.engine import pdus
from dde.dicom.engine.pdus import ProtocolError
from dde.dicom.uids import (
    APPLICATION_CONTEXT_NAME,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)

MAX_CONTEXTS: Final = 128
"""Presentation context ids are odd numbers 1..255."""
USER_IDENTITY_USERNAME_AND_PASSCODE: Final = 2
DEFAULT_MAX_PDU: Final = 1 << 20
"""The largest P-DATA-TF we announce we accept (1 MiB)."""

_REJECT_REASONS: Final = {
    (1, 1): "no reason given", (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised", (1, 7): "called AE title not recognised",
    (2, 1): "no reason given", (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion", (3, 2): "local limit exceeded",
}


@dataclass(frozen=True)
class ProposedContext:
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True)
class AssociationRequest:
    called_aet: str
    calling_aet: str
    contexts: Sequence[ProposedContext]
    user_identity: tuple[str, str] | None = None
    """Username and passcode (user identity negotiation), or none."""
    max_pdu: int = DEFAULT_MAX_PDU


@dataclass(frozen=True)
class Negotiated:
    """What the acceptor agreed to."""

    accepted: tuple[AcceptedContext, ...]
    peer_max_pdu: int
    """The largest P-DATA-TF the acceptor takes (0: no limit)."""

    @cached_property
    def _by_pair(self) -> dict[tuple[str, str], AcceptedContext]:
        by_pair: dict[tuple[str, str], AcceptedContext] = {}
        for context in self.accepted:
            by_pair.setdefault((context.abstract_syntax, context.transfer_syntax), context)
        return by_pair

    def context_for(self, sop_class_uid: str, transfer_syntax_uid: str) -> AcceptedContext | None:
        return self._by_pair.get((sop_class_uid, transfer_syntax_uid))

    def context_of(self, sop_class_uid: str) -> AcceptedContext | None:
        """The first accepted context of ``sop_class_uid``, whatever its transfer syntax
        (a service whose datasets are encoded by the router: Verification, Storage
        Commitment)."""
        return next((c for c in self.accepted if c.abstract_syntax == sop_class_uid), None)


class AssociationRejected(Exception):
    """The acceptor answered A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result, self.source, self.reason = result, source, reason
        permanence = "permanently" if result == 1 else "transiently"
        why = _REJECT_REASONS.get((source, reason), f"source {source}, reason {reason}")
        super().__init__(f"association rejected {permanence}: {why}")


def context_id(index: int) -> int:
    return 2 * index + 1


def implementation_items(max_pdu: int) -> list[Any]:
    """The user information items every association of ours carries: the largest
    P-DATA-TF we take, our implementation class UID and version name."""
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return [maximum, implementation, version]


def encode_request(request: AssociationRequest) -> bytes:
    if not 0 < len(request.contexts) <= MAX_CONTEXTS:
        raise ValueError(f"an association proposes 1 to {MAX_CONTEXTS} presentation contexts")
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = request.calling_aet
    primitive.called_ae_title = request.called_aet
    items = implementation_items(request.max_pdu)
    if request.user_identity is not None:
        identity = UserIdentityNegotiation()
        identity.user_identity_type = USER_IDENTITY_USERNAME_AND_PASSCODE
        identity.primary_field = request.user_identity[0].encode()
        identity.secondary_field = request.user_identity[1].encode()
        identity.positive_response_requested = False
        items.append(identity)
    primitive.user_information = items
    contexts = []
    for index, proposed in enumerate(request.contexts):
        context = PresentationContext()
        context.context_id = context_id(index)
        context.abstract_syntax = proposed.abstract_syntax
        context.transfer_syntax = list(proposed.transfer_syntaxes)
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def decode_acceptance(request: AssociationRequest, body: bytes) -> Negotiated:
    """The acceptor's A-ASSOCIATE-AC body (without the 6-byte PDU header) read against what
    we proposed; :class:`ProtocolError` if it cannot be decoded."""
    pdu = A_ASSOCIATE_AC()
    try:
        pdu.decode(pdus.header(pdus.PduType.A_ASSOCIATE_AC, len(body)) + body)
        primitive = pdu.to_primitive()
    except Exception as exc:  # pynetdicom raises assorted errors on malformed items
        raise ProtocolError(f"an A-ASSOCIATE-AC that cannot be decoded: {exc}") from None
    proposed = {context_id(i): c for i, c in enumerate(request.contexts)}
    accepted: list[AcceptedContext] = []
    for result in primitive.presentation_context_definition_results_list or []:
        ident = int(result.context_id or 0)
        mine = proposed.get(ident)
        if mine is None or result.result != 0 or not result.transfer_syntax:
            continue
        syntax = str(result.transfer_syntax[0])
        if syntax not in mine.transfer_syntaxes:
            continue  # an acceptor may not choose a syntax we did not propose
        accepted.append(AcceptedContext(ident, mine.abstract_syntax, syntax))
    peer_max = 0
    for item in primitive.user_information or []:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
    return Negotiated(tuple(accepted), peer_max)


def decode_rejection(body: bytes) -> AssociationRejected:
    pdu = A_ASSOCIATE_RJ()
    try:
        pdu.decode(pdus.header(pdus.PduType.A_ASSOCIATE_RJ, len(body)) + body)
    except Exception as exc:
        raise ProtocolError(f"an A-ASSOCIATE-RJ that cannot be decoded: {exc}") from None
    return AssociationRejected(int(pdu.result or 0), int(pdu.source or 0),
                               int(pdu.reason_diagnostic or 0))

