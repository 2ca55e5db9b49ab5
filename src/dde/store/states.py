"""Delivery states and the transitions the ledger allows between them."""

from __future__ import annotations

from enum import StrEnum


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


_ALLOWED: frozenset[tuple[DeliveryState, DeliveryState]] = frozenset(
    {
        (DeliveryState.PENDING, DeliveryState.PENDING),  # a retry is scheduled
        (DeliveryState.PENDING, DeliveryState.DELIVERED),
        (DeliveryState.PENDING, DeliveryState.FAILED),
        (DeliveryState.FAILED, DeliveryState.PENDING),  # an operator's retry
    }
)


class InvalidTransition(Exception):
    pass


def check_transition(old: DeliveryState, new: DeliveryState) -> None:
    """Raise :class:`InvalidTransition` unless ``old → new`` is a legal ledger move.

    Delivered is final: a delivered instance is never sent again by the dispatcher.
    """
    if (old, new) not in _ALLOWED:
        raise InvalidTransition(f"a delivery cannot go from {old} to {new}")


_AFTER_COMMITMENT_FAILURE: frozenset[tuple[DeliveryState, DeliveryState]] = frozenset(
    {
        (DeliveryState.DELIVERED, DeliveryState.PENDING),  # sent again
        (DeliveryState.DELIVERED, DeliveryState.FAILED),  # its attempts are spent
    }
)


def check_commitment_failure(old: DeliveryState, new: DeliveryState) -> None:
    """The one way out of delivered: the destination did not commit to the instance
    (storage commitment failed), so the delivery is queued again or, its attempts spent,
    failed. Outcomes of sending (:func:`check_transition`) never leave delivered."""
    if (old, new) not in _AFTER_COMMITMENT_FAILURE:
        raise InvalidTransition(f"a failed commitment cannot take a delivery from {old} "
                                f"to {new}")
