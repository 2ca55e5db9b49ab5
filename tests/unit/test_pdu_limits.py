"""The PDU size guard on accepted connections: a claimed length beyond what we accept is
aborted before the body is read; everything else passes through untouched."""

from __future__ import annotations

import queue
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from dde.dicom.pynetdicom_adapter import (
    A_ABORT_INVALID_PARAMETER,
    ABORT_LINGER,
    MAX_CONTROL_PDU,
    PduTooLarge,
    end_aborted_soon,
    limit_pdu_sizes,
)


class FakeRaw:
    """The raw socket: ``recv_into`` serves the same stream, at most 1000 bytes a call."""

    def __init__(self, owner: FakeAssociationSocket) -> None:
        self.owner = owner
        self.sent = bytearray()
        self.timeout: float | None = None

    def recv_into(self, buffer: memoryview, nbytes: int) -> int:
        owner = self.owner
        data = owner.stream[:min(nbytes, 1000)]
        owner.stream = owner.stream[len(data):]
        owner.reads.append(len(data))
        buffer[:len(data)] = data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def settimeout(self, value: float | None) -> None:
        self.timeout = value


class FakeAssociationSocket:
    """pynetdicom's AssociationSocket as the DUL uses it: ``recv(n)`` from a byte stream."""

    def __init__(self, stream: bytes) -> None:
        self.stream = bytearray(stream)
        self.socket = FakeRaw(self)
        self.reads: list[int] = []

    def recv(self, nr_bytes: int) -> bytearray:
        self.reads.append(nr_bytes)
        data, self.stream = self.stream[:nr_bytes], self.stream[nr_bytes:]
        return data


def _guarded(stream: bytes, max_pdu_size: int = 16384) -> FakeAssociationSocket:
    sock = FakeAssociationSocket(stream)
    event: Any = SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=sock)))
    limit_pdu_sizes(event, max_pdu_size, 2.5)
    assert sock.socket.timeout == 2.5
    return sock


def _pdu(pdu_type: int, body: bytes, claimed: int | None = None) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body) if claimed is None else claimed) + body


def _read_pdu(sock: FakeAssociationSocket) -> bytes:
    header = bytes(sock.recv(6))
    (length,) = struct.unpack(">L", header[2:6])
    return header + bytes(sock.recv(length))


def test_pdus_within_the_limits_pass_through() -> None:
    pdus = [_pdu(0x01, b"a" * 300), _pdu(0x04, b"d" * 16384), _pdu(0x04, b"e" * 6),
            _pdu(0x05, b"\0" * 4)]
    sock = _guarded(b"".join(pdus))
    assert [_read_pdu(sock) for _ in pdus] == pdus
    assert sock.socket.sent == b""


def test_a_p_data_pdu_beyond_our_maximum_is_aborted_before_its_body_is_read() -> None:
    sock = _guarded(_pdu(0x04, b"", claimed=0x7FFFFFFF) + b"x" * 100)
    with pytest.raises(PduTooLarge):
        _read_pdu(sock)
    assert sock.reads == [6]
    assert bytes(sock.socket.sent) == A_ABORT_INVALID_PARAMETER


def test_an_association_request_beyond_the_control_limit_is_aborted() -> None:
    sock = _guarded(_pdu(0x01, b"", claimed=MAX_CONTROL_PDU + 1))
    with pytest.raises(PduTooLarge):
        _read_pdu(sock)


def test_max_pdu_size_zero_leaves_p_data_unbounded() -> None:
    pdu = _pdu(0x04, b"z" * 70000)
    sock = _guarded(pdu, max_pdu_size=0)
    assert _read_pdu(sock) == pdu


def _transition(current: str, following: str, artim: float | None = 30.0) -> Any:
    timer = SimpleNamespace(timeout=artim)
    dul = SimpleNamespace(artim_timer=timer, to_user_queue=queue.Queue())
    event: Any = SimpleNamespace(assoc=SimpleNamespace(dul=dul), current_state=current,
                                 next_state=following)
    end_aborted_soon(event)
    return dul


def test_garbage_before_a_request_wakes_the_acceptor_and_caps_the_abort_wait() -> None:
    dul = _transition("Sta2", "Sta13")
    assert dul.artim_timer.timeout == ABORT_LINGER
    assert dul.to_user_queue.get_nowait() is None  # what the acceptor's timed-out wait returns


def test_a_connection_closed_before_a_request_wakes_the_acceptor() -> None:
    dul = _transition("Sta2", "Sta1")
    assert dul.artim_timer.timeout == 30.0
    assert dul.to_user_queue.get_nowait() is None


def test_a_valid_request_and_later_transitions_are_left_alone() -> None:
    for current, following in [("Sta2", "Sta3"), ("Sta3", "Sta6"), ("Sta6", "Sta6"),
                               ("Sta6", "Sta8"), ("Sta8", "Sta1")]:
        dul = _transition(current, following)
        assert dul.artim_timer.timeout == 30.0
        assert dul.to_user_queue.empty()


def test_an_abort_after_association_caps_the_wait_only() -> None:
    dul = _transition("Sta6", "Sta13")
    assert dul.artim_timer.timeout == ABORT_LINGER
    assert dul.to_user_queue.empty()
    assert _transition("Sta6", "Sta13", artim=0.5).artim_timer.timeout == 0.5


def test_a_body_cut_short_by_the_peer_returns_what_arrived() -> None:
    pdu = _pdu(0x04, b"y" * 5000)
    sock = _guarded(pdu[:3006])  # header + 3000 of the 5000 body bytes, then closed
    assert _read_pdu(sock) == pdu[:3006]
