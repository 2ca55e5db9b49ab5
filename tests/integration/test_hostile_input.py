"""Hostile input against the receiver (loopback only, bounded loops): random bytes, garbage
inside an association, a PDU claiming 2 GB, silent peers, more associations than allowed.

The router runs as its own process (``dde serve``); the attacks land on its receiver process
(``receiver.processes: 1``, the default), whose peak memory (VmHWM) is measured, and which
must neither crash nor be restarted: the same receiver pid answers from the first attack to
the last. The main process's peak memory is measured too. After each attack the router still
answers a C-ECHO (DCMTK echoscu) and a valid C-STORE (DCMTK storescu) is acknowledged and
delivered."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.support.datagen import write_series
from tests.support.faults import sop_instance_uid, start_storescu
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, wait_until
from tests.support.router import (
    ROUTER_AET,
    RouterProcess,
    router_settings,
    write_router_home,
)

from dde.dicom.engine import pdus

A_ABORT_INVALID_PARAMETER = pdus.a_abort(pdus.ABORT_SOURCE_PROVIDER,
                                         pdus.ABORT_REASON_INVALID_PDU_PARAMETER)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NETWORK_TIMEOUT = 2.0
MAX_ASSOCIATIONS = 8
RSS_LIMIT_MB = 300
TWO_GB = 0x7FFFFFFF


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process, in MB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise AssertionError(f"process {pid} is gone") from None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid} (a zombie: it died)")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@dataclass
class Target:
    router: RouterProcess
    storage: RunningOrthanc
    files: Path
    receivers: list[int]
    """The receiver processes at the start: the same ones must answer until the end."""
    sent: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.router.port

    @property
    def pid(self) -> int:
        assert self.router.process is not None
        return self.router.process.pid

    def receivers_peak_rss_mb(self) -> float:
        return max(peak_rss_mb(pid) for pid in self.receivers)

    def check_processes(self, label: str) -> None:
        """The main process and the very same receiver processes are alive: none crashed,
        none was restarted by the pool."""
        assert self.router.process is not None and self.router.process.poll() is None, \
            f"the router died during {label}"
        dead = [pid for pid in self.receivers if not alive(pid)]
        assert not dead, f"receiver process(es) {dead} died during {label}"
        now = sorted(pid for pid in self.router.receiver_pids() if alive(pid))
        assert now == sorted(self.receivers), (
            f"receiver processes {sorted(self.receivers)} before {label}, {now} after: "
            f"one was restarted")
        log = self.router.log_path.read_text(errors="replace")
        assert " ended (exit code" not in log and "started again" not in log, (
            f"the pool logged a receiver process ending or restarting during {label}")

    def still_serves(self, label: str, seconds: float) -> None:
        """C-ECHO answered, a valid C-STORE acknowledged, memory bounded, the receiver
        process neither crashed nor restarted; figures kept."""
        self.check_processes(label)
        # Associations the attack ended may hold their slots (max_associations) for a
        # moment while pynetdicom winds them down: the receiver must answer again soon.
        after = time.monotonic()

        def echo() -> bool:
            answer = subprocess.run(["/usr/bin/echoscu", "-aec", ROUTER_AET, "127.0.0.1",
                                     str(self.port)], capture_output=True, timeout=30)
            return answer.returncode == 0

        wait_until(echo, 5 * NETWORK_TIMEOUT, f"a C-ECHO answered after {label}")
        echo_after = time.monotonic() - after
        path = write_series(self.files / label.replace(" ", "-"), 1)[0]
        run = start_storescu([path], self.port, ROUTER_AET, self.files / f"{label}.log")
        run.wait(30)
        assert run.acknowledged() == [path], f"no C-STORE after {label}: {run.log()[-1500:]}"
        self.sent.append(sop_instance_uid(path))
        self.check_processes(label)
        receiver_peak = self.receivers_peak_rss_mb()
        main_peak = peak_rss_mb(self.pid)
        self.figures[label] = (f"attack {seconds:.1f} s, C-ECHO again after {echo_after:.1f} s, "
                               f"peak RSS (VmHWM) receiver process {receiver_peak:.0f} MB, "
                               f"main process {main_peak:.0f} MB")
        print(f"\n{label}: {self.figures[label]}")
        assert receiver_peak < RSS_LIMIT_MB, (
            f"receiver process peak RSS {receiver_peak:.0f} MB after {label}")
        assert main_peak < RSS_LIMIT_MB, f"main process peak RSS {main_peak:.0f} MB after {label}"


@pytest.fixture
def target(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[Target]:
    storage = orthanc_factory("ORTHANC1")
    home = tmp_path / "router-home"
    port = free_port()
    write_router_home(home, router_settings(
        [storage], None, port=port, web={"enabled": False},
        receiver={"host": "127.0.0.1", "port": port, "ae_title": ROUTER_AET,
                  "network_timeout": NETWORK_TIMEOUT, "acse_timeout": NETWORK_TIMEOUT,
                  "max_associations": MAX_ASSOCIATIONS}))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    try:
        receivers = [pid for pid in router.receiver_pids() if alive(pid)]
        assert len(receivers) == 1, f"expected one receiver process, found {receivers}"
        result = Target(router, storage, tmp_path / "files", receivers)
        yield result
        storage.wait_for_sop_instance_uids(set(result.sent), timeout=30)
    finally:
        router.terminate()


def _connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _answer(sock: socket.socket, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """What the router answers, and whether it closed the connection (False: the socket's
    own timeout ran out first)."""
    received = bytearray()
    try:
        while len(received) < limit:
            data = sock.recv(65536)
            if not data:
                return bytes(received), True
            received += data
    except ConnectionResetError:
        return bytes(received), True
    except TimeoutError:
        pass
    return bytes(received), False


def _read_until_closed(sock: socket.socket) -> bytes:
    data, closed = _answer(sock)
    assert closed, "the router kept a hostile connection open"
    return data


def _timed(action: Callable[[], Any]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def _requestor() -> Any:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(Verification)
    ae.network_timeout = 30
    ae.acse_timeout = 10
    return ae


def _associate(ae: Any, port: int) -> Any:
    assoc = ae.associate("127.0.0.1", port, ae_title=ROUTER_AET)
    assert assoc.is_established, "the router refused a plain association"
    return assoc


def _ended(assoc: Any) -> bool:
    return not assoc.is_established


def test_hostile_input_leaves_the_receiver_up_and_bounded(target: Target) -> None:
    rng = random.Random(20261127)
    target.still_serves("baseline", 0.0)

    # 1. Hundreds of connections sending random bytes, 32 at a time.
    def random_bytes(index: int) -> None:
        with _connect(target.port) as sock:
            payload = rng.randbytes(rng.randint(1, 16384))
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return  # the router already closed it
            _read_until_closed(sock)

    def flood() -> None:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(random_bytes, range(300)))

    target.still_serves("300 connections of random bytes", _timed(flood))

    # 2. Garbage after a valid association: the router aborts it.
    ae = _requestor()

    def garbage_inside() -> None:
        for index in range(20):
            assoc = _associate(ae, target.port)
            first = bytes([0x04 if index % 2 else 0xFF, 0])  # a P-DATA-TF, or no PDU type
            assoc.dul.socket.socket.sendall(first + rng.randbytes(4096))
            wait_until(lambda a=assoc: _ended(a), 15, "the router ending a garbled association")

    target.still_serves("garbage after a valid association x20", _timed(garbage_inside))

    # 3. PDU headers claiming 2 GB: an A-ASSOCIATE-RQ, then a P-DATA-TF inside an association;
    #    the claimant streams up to 300 MB behind each. The router aborts before reading it.
    def huge_pdus() -> None:
        chunk = bytes(1 << 20)
        with _connect(target.port) as sock:
            sent = 0
            try:
                sock.sendall(b"\x01\x00" + TWO_GB.to_bytes(4, "big"))
                while sent < 300 << 20:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            answer = _read_until_closed(sock)
            assert sent < 300 << 20, "the router read a 2 GB A-ASSOCIATE-RQ"
            assert answer.startswith(A_ABORT_INVALID_PARAMETER), answer[:16]
        assoc = _associate(ae, target.port)
        raw = assoc.dul.socket.socket
        sent = 0
        try:
            raw.sendall(b"\x04\x00" + TWO_GB.to_bytes(4, "big"))
            while sent < 300 << 20:
                raw.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        assert sent < 300 << 20, "the router read a 2 GB P-DATA-TF"
        wait_until(lambda: _ended(assoc), 15, "the router aborting the 2 GB P-DATA-TF")
        # A claim of 2 GB and then silence: the read inside the PDU times out.
        with _connect(target.port, timeout=NETWORK_TIMEOUT * 10) as sock:
            sock.sendall(b"\x01\x00" + (1000).to_bytes(4, "big") + b"\x00" * 10)
            assert _read_until_closed(sock) == b""

    target.still_serves("2 GB PDU claims", _timed(huge_pdus))

    # 4. Silent peers: connections that never send a byte, an association that goes quiet.
    def silent() -> None:
        # (the association first: silent connections count against max_associations)
        quiet = _associate(ae, target.port)
        socks = [_connect(target.port, timeout=NETWORK_TIMEOUT * 10) for _ in range(20)]
        try:
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(_read_until_closed, socks))
            assert all(a in (b"", A_ABORT_INVALID_PARAMETER) or a.startswith(b"\x07")
                       for a in answers), answers
            wait_until(lambda: _ended(quiet), NETWORK_TIMEOUT * 5,
                       "the router ending an idle association")
        finally:
            for sock in socks:
                sock.close()

    seconds = _timed(silent)
    assert seconds < NETWORK_TIMEOUT * 5
    target.still_serves("20 silent connections + 1 idle association", seconds)

    # 5. More associations than receiver.max_associations: the extra ones are rejected.
    def crowd() -> None:
        held = []
        rejected = 0
        try:
            for _ in range(MAX_ASSOCIATIONS + 4):
                assoc = ae.associate("127.0.0.1", target.port, ae_title=ROUTER_AET)
                if assoc.is_established:
                    held.append(assoc)
                elif assoc.is_rejected:
                    rejected += 1
            assert len(held) == MAX_ASSOCIATIONS, len(held)
            assert rejected == 4
        finally:
            for assoc in held:
                assoc.release()
        target.figures["over the limit"] = f"{len(held)} held, {rejected} rejected"

    target.still_serves(f"{MAX_ASSOCIATIONS + 4} associations, limit {MAX_ASSOCIATIONS}",
                        _timed(crowd))
    print(f"\nhostile input, peak RSS (VmHWM) of the receiver process "
          f"{target.receivers_peak_rss_mb():.0f} MB, of the main process "
          f"{peak_rss_mb(target.pid):.0f} MB (limit {RSS_LIMIT_MB} each); receiver process "
          f"{target.receivers} alive from start to end; {len(target.sent)} valid instances sent")

