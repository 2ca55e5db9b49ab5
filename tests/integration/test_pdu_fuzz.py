"""Fuzzing the PDU path: the real ``StorageSCP`` on a loopback port, fed random bytes and a
valid A-ASSOCIATE-RQ followed by mutated and garbage PDUs (random types, lengths that lie,
truncated bodies, broken PDV items). Afterwards it still answers a C-ECHO and every
association thread is gone.

Hypothesis with a fixed seed (``derandomize``), no example database and bounded example
counts: the same inputs on every run, a few seconds in all. No Orthanc is needed (the ingest
pipeline is a stub that refuses); ``integration`` because it listens on a port.

Known and harmless: pynetdicom's reactor thread raises on an A-ABORT whose source field is
invalid (``ValueError: Invalid A-ABORT 'Source' value``, reported by pytest as an unhandled
thread exception warning); the receiver still closes that connection at once and the
thread count comes back, which is what this test checks.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.orthanc import wait_until
from tests.support.router import ROUTER_AET
from tests.support.senders import read_pdu

from dde.config import ReceiverSettings
from dde.dicom import status as dimse
from dde.dicom.engine.acceptor import MAX_CONTROL_PDU
from dde.receiving.ingest import IngestPipeline
from dde.receiving.scp import STORE_WORKERS, StorageSCP

pytestmark = pytest.mark.integration

NETWORK_TIMEOUT = 1.0
# long on purpose: a slot must be freed as soon as a connection fails, not after acse_timeout
# (dde.receiving.pdu_limits.end_aborted_soon)
ACSE_TIMEOUT = 30.0
MAX_PDU_SIZE = 16384
MAX_ASSOCIATIONS = 8
RANDOM_EXAMPLES = 100
GARBAGE_EXAMPLES = 200
# what a receiver may send back: A-ASSOCIATE-AC/RJ, P-DATA-TF, A-RELEASE-RP, A-ABORT
ANSWER_TYPES = {0x02, 0x03, 0x04, 0x06, 0x07}

FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _RefusingPipeline:
    """Stands in for the ingest pipeline: nothing reaches storage in this test."""

    def __init__(self) -> None:
        self.calls = 0

    def ingest(self, incoming: Any) -> Any:
        self.calls += 1
        incoming.dataset_file.unlink(missing_ok=True)  # the pipeline's once handed over
        return SimpleNamespace(status=dimse.OUT_OF_RESOURCES)


@dataclass
class Receiver:
    scp: StorageSCP
    threads_at_start: int

    @property
    def port(self) -> int:
        return self.scp.port

    def active_associations(self) -> int:
        server = self.scp._server
        assert server is not None
        return server.active_associations


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver_settings = ReceiverSettings(
        host="127.0.0.1", port=0, ae_title=ROUTER_AET, network_timeout=NETWORK_TIMEOUT,
        acse_timeout=ACSE_TIMEOUT, dimse_timeout=NETWORK_TIMEOUT,
        max_associations=MAX_ASSOCIATIONS, max_pdu_size=MAX_PDU_SIZE)
    scp = StorageSCP(receiver_settings, cast(IngestPipeline, _RefusingPipeline()))
    scp.start()
    try:
        yield Receiver(scp, threading.active_count())
    finally:
        scp.stop()


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(called: str = ROUTER_AET, calling: str = "FUZZER") -> bytes:
    """A valid A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification in implicit VR LE."""
    variable = (
        _item(0x10, b"1.2.840.10008.3.1.1.1")  # application context
        + _item(0x20, bytes([1, 0, 0, 0])  # presentation context 1
                + _item(0x30, b"1.2.840.10008.1.1")
                + _item(0x40, b"1.2.840.10008.1.2"))
        + _item(0x50, _item(0x51, struct.pack(">L", MAX_PDU_SIZE))  # user information
                + _item(0x52, b"1.2.826.0.1.3680043.9.3811.9")))
    fixed = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
             + bytes(32))
    return struct.pack(">BBL", 0x01, 0, len(fixed) + len(variable)) + fixed + variable


A_RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])


@st.composite
def _pdv_items(draw: st.DrawFn) -> bytes:
    """P-DATA-TF body: PDV items with context ids, control bytes and lengths that may lie."""
    items = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(max_size=128))
        header = bytes([draw(st.sampled_from([1, 3, 0, 255])),
                        draw(st.sampled_from([0, 1, 2, 3, 0xFF]))])
        length = draw(st.sampled_from([len(data) + 2, len(data), len(data) + 40, 0,
                                       0xFFFFFFFF]))
        items += struct.pack(">L", length) + header + data
    return items


@st.composite
def _pdu(draw: st.DrawFn) -> bytes:
    pdu_type = draw(st.one_of(st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]),
                              st.integers(0, 255)))
    body = draw(_pdv_items()) if pdu_type == 0x04 and draw(st.booleans()) \
        else draw(st.binary(max_size=512))
    mode = draw(st.sampled_from(["exact", "short", "truncated", "huge", "any"]))
    if mode == "exact":
        length = len(body)
    elif mode == "short":
        length = draw(st.integers(0, len(body)))
    elif mode == "truncated":  # claims more than follows: the peer then closes
        length = len(body) + draw(st.integers(1, 4096))
    elif mode == "huge":
        length = draw(st.sampled_from([MAX_PDU_SIZE + 1, MAX_CONTROL_PDU + 1, 0x7FFFFFFF,
                                       0xFFFFFFFF]))
    else:
        length = draw(st.integers(0, 0xFFFFFFFF))
    return struct.pack(">BBL", pdu_type, draw(st.sampled_from([0, 0xFF])), length) + body


@st.composite
def _garbage_pdus(draw: st.DrawFn) -> bytes:
    pdus = draw(st.lists(_pdu(), min_size=1, max_size=4))
    if draw(st.booleans()):
        pdus.append(A_RELEASE_RQ)
    return b"".join(pdus)


def _exchange(port: int, payload: bytes, associate: bool = False) -> bytes:
    """Send ``payload`` (after an A-ASSOCIATE-RQ and its answer if ``associate``), close our
    side, and return what the receiver answered until it closed the connection; it must do
    so within a few network timeouts."""
    with socket.create_connection(("127.0.0.1", port), timeout=NETWORK_TIMEOUT * 4) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answer = bytearray()
        try:
            if associate:
                sock.sendall(associate_rq())
                answer += read_pdu(sock)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while data := sock.recv(65536):
                answer += data
        except TimeoutError:
            raise AssertionError("the receiver kept a fuzzed connection open") from None
        except OSError:
            pass  # reset, or closed before we were done sending: the receiver's right
        return bytes(answer)


def _check_answer(answer: bytes) -> None:
    """Every whole PDU the receiver sent is one a receiver may send."""
    at = 0
    while at + 6 <= len(answer):
        pdu_type, _, length = struct.unpack(">BBL", answer[at:at + 6])
        assert pdu_type in ANSWER_TYPES, f"PDU type 0x{pdu_type:02X} in the answer"
        at += 6 + length


def _echo(port: int) -> bool:
    result = subprocess.run(["/usr/bin/echoscu", "-aec", ROUTER_AET, "127.0.0.1", str(port)],
                            capture_output=True, env={**os.environ, "TCP_NODELAY": "1"},
                            timeout=30)
    return result.returncode == 0


def test_a_valid_request_is_accepted_and_released(receiver: Receiver) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(associate_rq())
        answer = read_pdu(sock)
        assert answer[:1] == b"\x02", answer[:16]  # A-ASSOCIATE-AC
        sock.sendall(A_RELEASE_RQ)
        assert read_pdu(sock) == bytes([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-RELEASE-RP


def test_fuzzed_pdus_leave_the_receiver_answering_and_no_thread_behind(
        receiver: Receiver) -> None:
    counts = {"random": 0, "garbage": 0, "answered": 0, "accepted": 0, "rejected": 0,
              "peak_threads": 0}

    @settings(FUZZ, max_examples=RANDOM_EXAMPLES)
    @given(st.binary(min_size=1, max_size=4096))
    def random_bytes(payload: bytes) -> None:
        counts["random"] += 1
        answer = _exchange(receiver.port, payload)
        counts["answered"] += bool(answer)
        counts["peak_threads"] = max(counts["peak_threads"], threading.active_count())
        _check_answer(answer)

    @settings(FUZZ, max_examples=GARBAGE_EXAMPLES)
    @given(_garbage_pdus())
    def garbage_after_association(payload: bytes) -> None:
        counts["garbage"] += 1
        answer = _exchange(receiver.port, payload, associate=True)
        counts["accepted"] += answer[:1] == b"\x02"
        counts["rejected"] += answer[:1] == b"\x03"  # max_associations still held
        counts["answered"] += bool(answer)
        counts["peak_threads"] = max(counts["peak_threads"], threading.active_count())
        _check_answer(answer)

    started = time.monotonic()
    random_bytes()
    garbage_after_association()
    fuzzing = time.monotonic() - started
    after_fuzzing = threading.active_count()

    settled = time.monotonic()
    wait_until(lambda: receiver.active_associations() == 0, NETWORK_TIMEOUT * 5,
               "every fuzzed association ended (its slot free)")
    threads_settled = time.monotonic() - settled
    # associations run on one event loop: threads are the fixed store pool, never one per
    # association
    assert threading.active_count() <= receiver.threads_at_start + STORE_WORKERS
    wait_until(lambda: _echo(receiver.port), NETWORK_TIMEOUT * 5, "a C-ECHO answered")
    wait_until(lambda: receiver.active_associations() == 0,
               NETWORK_TIMEOUT * 5, "the C-ECHO association ending")
    print(f"\nPDU fuzzing: {counts['random']} random-byte connections, {counts['garbage']} "
          f"associations followed by mutated PDUs in {fuzzing:.1f} s "
          f"({counts['answered']} answered; {counts['accepted']} associations accepted, "
          f"{counts['rejected']} rejected); threads: {receiver.threads_at_start} at start, "
          f"peak {counts['peak_threads']}, {after_fuzzing} after the last example, back in "
          f"{threads_settled:.1f} s; C-ECHO answered")
    assert fuzzing < 15, f"fuzzing took {fuzzing:.1f} s"
