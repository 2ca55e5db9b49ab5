"""What a sender reports about one delivery attempt, and the interface senders share."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol


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

    @classmethod
    def delivered(cls, detail: str = "") -> SendResult:
        return cls(SendStatus.DELIVERED, detail)

    @classmethod
    def refused(cls, detail: str, *, permanent: bool = False) -> SendResult:
        return cls(SendStatus.REFUSED, detail, permanent)

    @classmethod
    def no_response(cls, detail: str) -> SendResult:
        """A refusal by silence: no answer within the response timeout (suspect)."""
        return cls(SendStatus.REFUSED, detail, suspect=True)

    @classmethod
    def unreachable(cls, detail: str) -> SendResult:
        return cls(SendStatus.UNREACHABLE, detail)


@dataclass(frozen=True)
class Shipment:
    """One instance to deliver: a spooled Part-10 file and its identity."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


class Sender(Protocol):
    def prepare(self, shipments: list[Shipment]) -> None:
        """Hint of what is about to be sent (to negotiate presentation contexts at once)."""

    def send(self, shipment: Shipment) -> SendResult: ...

    def release(self) -> None:
        """Close any open association/connection (the queue is empty or we stop)."""

    def abort(self) -> None:
        """From another thread, when stopping: make a send blocked on the peer return now."""
