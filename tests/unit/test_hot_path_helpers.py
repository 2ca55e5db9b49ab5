"""Small helpers of the receive and delivery hot paths: port reservation, capped sleeps,
thread priorities."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from dde.delivery.dispatcher import lower_thread_priority
from dde.receiving.pool import reserve_port

HOST = "127.0.0.1"


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.bind((HOST, 0))
    plain.listen()
    yield plain
    plain.close()


def test_reserve_port_refuses_a_port_someone_listens_on(
        listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]

    with pytest.raises(OSError):
        reserve_port(HOST, port)


def test_reserve_port_zero_holds_a_real_port_that_receivers_can_share() -> None:
    holder = reserve_port(HOST, 0)
    try:
        port = holder.getsockname()[1]
        assert port != 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as receiver:
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            receiver.bind((HOST, port))
            receiver.listen()
            with socket.create_connection((HOST, port), timeout=5) as client:
                accepted, _ = receiver.accept()
                accepted.close()
                assert client.getpeername()[1] == port
    finally:
        holder.close()


def test_a_held_port_cannot_be_taken_by_a_plain_socket() -> None:
    holder = reserve_port(HOST, 0)
    try:
        port = holder.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as intruder, \
                pytest.raises(OSError):
            intruder.bind((HOST, port))
    finally:
        holder.close()


def thread_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def priorities_in_a_thread(increment: int) -> tuple[int, int]:
    """(before, after) ``lower_thread_priority(increment)`` in a new thread."""
    seen: list[int] = []

    def run() -> None:
        seen.append(thread_priority())
        lower_thread_priority(increment)
        seen.append(thread_priority())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    before, after = seen
    return before, after


def test_lower_thread_priority_lowers_only_the_calling_thread() -> None:
    main_before = thread_priority()
    if main_before > 16:
        pytest.skip("the test process already runs at the lowest priorities")

    before, after = priorities_in_a_thread(3)

    assert after == before + 3
    assert thread_priority() == main_before


def test_lower_thread_priority_zero_changes_nothing() -> None:
    before, after = priorities_in_a_thread(0)

    assert after == before


def test_lower_thread_priority_stops_at_the_lowest_priority() -> None:
    before, after = priorities_in_a_thread(100)

    assert after == 19
