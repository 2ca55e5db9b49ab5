"""What a sender reports about one delivery attempt, and the interface senders share."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol, runtime_checkable

from dde.dicom.commitment import CommitmentRequest


class SendStatus(Enum):
    DELIVERED = "delivered"
    REFUSED = "refused"
    """The destination answered and refused this instance (retry may or may not help)."""
    UNREACHABLE = "unreachable"
    """No usable connection: an endpoint-level problem, not this instance's."""


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    detail: str = ""
    permanent: bool = False
    """A refusal that retrying the same bytes will not change."""
    suspect: bool = False
    """The destination took the instance (or part of it) and never answered: something in
    this instance may hang it, so it is retried alone; the connection was dropped."""
    retry_after: float | None = None
    """The destination asked to be left alone this many seconds (HTTP 429 or 503 with
    ``Retry-After``): the instance was not judged, so no attempt is spent, and nothing more
    is sent to it from this batch."""
    transfer_syntax_uid: str | None = None
    """Delivered in this syntax after transcoding (None: as received)."""
    transcoded_from: str | None = None

    @classmethod
    def delivered(cls, detail: str = "", *, transfer_syntax_uid: str | None = None,
                  transcoded_from: str | None = None) -> SendResult:
        return cls(SendStatus.DELIVERED, detail, transfer_syntax_uid=transfer_syntax_uid,
                   transcoded_from=transcoded_from)

    @classmethod
    def refused(cls, detail: str, *, permanent: bool = False) -> SendResult:
        return cls(SendStatus.REFUSED, detail, permanent)

    @classmethod
    def no_response(cls, detail: str) -> SendResult:
        """A refusal by silence: no answer within the response timeout (suspect)."""
        return cls(SendStatus.REFUSED, detail, suspect=True)

    @classmethod
    def retry_alone(cls, detail: str) -> SendResult:
        """Refused with others in one request, the destination not saying which: each is
        retried alone, by the suspect lane, to get a verdict of its own."""
        return cls(SendStatus.REFUSED, detail, suspect=True)

    @classmethod
    def unreachable(cls, detail: str) -> SendResult:
        return cls(SendStatus.UNREACHABLE, detail)

    @classmethod
    def throttled(cls, detail: str, retry_after: float) -> SendResult:
        """Not now, and not before ``retry_after`` seconds (the destination's own words)."""
        return cls(SendStatus.REFUSED, detail, retry_after=max(0.0, retry_after))


@dataclass(frozen=True)
class Shipment:
    """One instance to deliver: a spooled Part-10 file and its identity."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None = None
    """Known for spooled instances: senders that send a study in one request group by it."""


class Sender(Protocol):
    def prepare(self, shipments: list[Shipment]) -> None:
        """Hint of what is about to be sent (to negotiate presentation contexts at once)."""

    def send(self, shipment: Shipment) -> SendResult: ...

    def release(self) -> None:
        """Close any open association/connection (the queue is empty or we stop)."""

    def abort(self) -> None:
        """From another thread, when stopping: make a send blocked on the peer return now."""


@runtime_checkable
class BundleSender(Sender, Protocol):
    """A sender that carries several instances in one request (STOW-RS): the worker asks it
    how to bundle a claimed batch, then sends bundle by bundle."""

    def bundles(self, shipments: list[Shipment]) -> list[list[int]]:
        """The positions in ``shipments`` of the instances sent together, bundle by bundle
        (every position exactly once)."""

    def send_bundle(self, shipments: list[Shipment]) -> list[SendResult]:
        """Send one bundle; one result per shipment, in order."""


@runtime_checkable
class CommitmentRequester(Sender, Protocol):
    """A sender that can ask its destination for storage commitment (DICOM)."""

    def request_commitment(self, request: CommitmentRequest) -> str | None:
        """Send the N-ACTION; None when the destination took it, else why not."""
