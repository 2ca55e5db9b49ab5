"""Notes from receiver processes: Notifier datagrams become calls in the main process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Iterator

import pytest
from tests.support.orthanc import wait_until

from dde.receiving.notify import NotificationListener, Notifier, channel_name
from dde.telemetry import Telemetry


class RecordingTelemetry(Telemetry):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[int, float]] = []
        self.refused: list[tuple[str, float]] = []

    def instance_received(self, size: int, ack_seconds: float) -> None:
        with self.lock:
            self.received.append((size, ack_seconds))

    def instance_refused(self, reason: str, ack_seconds: float) -> None:
        with self.lock:
            self.refused.append((reason, ack_seconds))


class Committed:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[list[str]] = []

    def __call__(self, endpoints: Iterable[str]) -> None:
        with self.lock:
            self.calls.append(list(endpoints))


class Listening:
    def __init__(self, name: str, listener: NotificationListener, committed: Committed,
                 telemetry: RecordingTelemetry) -> None:
        self.name = name
        self.listener = listener
        self.committed = committed
        self.telemetry = telemetry


@pytest.fixture
def listening() -> Iterator[Listening]:
    name = channel_name()
    committed = Committed()
    telemetry = RecordingTelemetry()
    listener = NotificationListener(name, committed, telemetry)
    listener.start()
    yield Listening(name, listener, committed, telemetry)
    listener.stop()


@pytest.fixture
def notifier(listening: Listening) -> Iterator[Notifier]:
    sender = Notifier(listening.name)
    yield sender
    sender.close()


def send_raw(name: str, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
        raw.sendto(payload, "\0" + name)


def test_channel_names_are_fresh_and_name_the_process() -> None:
    first, second = channel_name(1234), channel_name(1234)

    assert first != second
    assert first.startswith("dde-router-1234-")


def test_committed_endpoints_reach_the_callback(listening: Listening,
                                                notifier: Notifier) -> None:
    notifier.committed(["ORTHANC1", "ORTHANC-PROBE"])
    notifier.committed(["ORTHANC2"])

    calls = wait_until(lambda: len(listening.committed.calls) == 2 and listening.committed.calls,
                       5, "two committed notes")

    assert calls == [["ORTHANC1", "ORTHANC-PROBE"], ["ORTHANC2"]]


def test_received_and_refused_reach_the_telemetry_with_their_numbers(
        listening: Listening, notifier: Notifier) -> None:
    telemetry = listening.telemetry

    notifier.instance_received(123456, 0.25)
    notifier.instance_refused("spool_full", 0.5)

    wait_until(lambda: telemetry.received and telemetry.refused, 5, "telemetry notes")
    assert telemetry.received == [(123456, 0.25)]  # exact in the six decimals sent
    assert telemetry.refused == [("spool_full", 0.5)]


@pytest.mark.parametrize("garbage", [
    b"received not-a-number 0.1",
    b"refused only-one-field",
    b"what is this",
    b"\xff\xfe\xfd",
    b"",
])
def test_a_malformed_or_unknown_note_does_not_stop_the_listener(
        listening: Listening, notifier: Notifier, garbage: bytes) -> None:
    send_raw(listening.name, garbage)
    notifier.committed(["ORTHANC1"])

    wait_until(lambda: listening.committed.calls, 5, "committed note after garbage")
    assert listening.committed.calls == [["ORTHANC1"]]
    assert listening.telemetry.received == [] and listening.telemetry.refused == []


def test_raw_datagrams_in_the_documented_format_are_understood(listening: Listening) -> None:
    send_raw(listening.name, b"received 42 1.500000")

    wait_until(lambda: listening.telemetry.received, 5, "received note")
    assert listening.telemetry.received == [(42, 1.5)]


def test_a_notifier_with_nobody_listening_does_not_raise() -> None:
    lonely = Notifier(channel_name())
    try:
        lonely.committed(["ORTHANC1"])
        lonely.instance_received(1, 0.1)
        lonely.instance_refused("no_route", 0.1)
    finally:
        lonely.close()
