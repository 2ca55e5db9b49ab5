"""The sender's guards around pynetdicom: responses only for the waiting call, and a
bounded send queue (P-DATA waits for room; release and abort never do)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pynetdicom.pdu_primitives import A_ABORT, P_DATA

from dde.dicom.pynetdicom_adapter import (
    BoundedSendQueue,
    SendStalled,
    keep_responses_for_the_waiting_call,
)


class FakeDimse:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def get_msg(self, block: bool = False) -> tuple[Any, Any]:
        self.calls.append(block)
        return 1, "C-STORE-RSP"


class FakeAssociation:
    def __init__(self) -> None:
        self.dimse = FakeDimse()


def test_the_reactors_non_blocking_look_never_takes_a_response() -> None:
    assoc = FakeAssociation()
    fake = assoc.dimse
    keep_responses_for_the_waiting_call(assoc)
    assert assoc.dimse.get_msg(block=False) == (None, None)
    assert assoc.dimse.get_msg() == (None, None)
    assert fake.calls == []  # the queue was not touched
    assert assoc.dimse.get_msg(block=True) == (1, "C-STORE-RSP")
    assert fake.calls == [True]


def test_p_data_waits_for_room_and_is_freed_by_the_dul_taking_it() -> None:
    sending = BoundedSendQueue(timeout=5, slots=2)
    sending.put(P_DATA())
    sending.put(P_DATA())
    third_in = threading.Event()

    def third() -> None:
        sending.put(P_DATA())
        third_in.set()

    threading.Thread(target=third, daemon=True).start()
    assert not third_in.wait(0.3)  # no room: the producer waits
    sending.get(False)  # the DUL thread sends one
    assert third_in.wait(5)
    assert sending.qsize() == 2


def test_release_and_abort_are_never_held_back() -> None:
    sending = BoundedSendQueue(timeout=5, slots=1)
    sending.put(P_DATA())
    sending.put(A_ABORT())  # would block forever if it needed a slot
    assert sending.qsize() == 2


def test_a_destination_that_takes_nothing_stalls_the_send_with_an_error() -> None:
    sending = BoundedSendQueue(timeout=0.3, slots=1)
    sending.put(P_DATA())
    with pytest.raises(SendStalled, match="took no data"):
        sending.put(P_DATA())


def test_cancel_wakes_a_waiting_sender() -> None:
    sending = BoundedSendQueue(timeout=60, slots=1)
    sending.put(P_DATA())
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            sending.put(P_DATA())
        except SendStalled as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    sending.cancel()
    thread.join(5)
    assert not thread.is_alive() and errors and "cancelled" in str(errors[0])
