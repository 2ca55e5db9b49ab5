"""What receiver processes tell the main process, over one Unix datagram socket.

A receiver process commits each instance to the ledger itself; the main process only needs
to hear about it to wake the delivery workers of the destinations at once (they would find
the work at their next poll anyway) and to count the instance in its metrics. Datagrams
are fire-and-forget: a lost one delays a delivery by at most one poll and misses one
metric sample, it never loses an instance. The socket lives in Linux's abstract namespace,
so there is no file to clean up after a crash.

Messages are one line of text: ``committed <endpoint> …``, ``received <bytes> <seconds>``,
``refused <reason> <seconds>``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable

from dde.telemetry import Telemetry

log = logging.getLogger(__name__)

MAX_DATAGRAM = 4096


def channel_name(pid: int | None = None) -> str:
    """A fresh abstract socket name for the main process ``pid`` (default: this one)."""
    return f"dde-router-{pid if pid is not None else os.getpid()}-{secrets.token_hex(4)}"


def _address(name: str) -> str:
    return "\0" + name


class Notifier(Telemetry):
    """The receiver process's end: a :class:`Telemetry` and an ``on_committed`` callback."""

    def __init__(self, name: str) -> None:
        self._address = _address(name)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def _send(self, message: str) -> None:
        try:
            self._socket.sendto(message.encode()[:MAX_DATAGRAM], self._address)
        except OSError:  # main process busy or gone: the ledger still has everything
            pass

    def committed(self, endpoints: Iterable[str]) -> None:
        self._send("committed " + " ".join(endpoints))

    def instance_received(self, size: int, ack_seconds: float) -> None:
        self._send(f"received {size} {ack_seconds:.6f}")

    def instance_refused(self, reason: str, ack_seconds: float) -> None:
        self._send(f"refused {reason} {ack_seconds:.6f}")

    def close(self) -> None:
        self._socket.close()


class NotificationListener:
    """The main process's end: a thread turning datagrams into calls."""

    def __init__(self, name: str, on_committed: Callable[[Iterable[str]], None],
                 telemetry: Telemetry) -> None:
        self.name = name
        self._on_committed = on_committed
        self._telemetry = telemetry
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(_address(name))
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._socket.settimeout(0.5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="receiver-notes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._socket.close()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self._socket.recv(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self.handle(data.decode())
            except Exception:  # a malformed note must not end the listener
                log.exception("could not handle a note from a receiver process")

    def handle(self, message: str) -> None:
        kind, _, rest = message.partition(" ")
        if kind == "committed":
            self._on_committed(rest.split())
        elif kind == "received":
            size, seconds = rest.split()
            self._telemetry.instance_received(int(size), float(seconds))
        elif kind == "refused":
            reason, seconds = rest.split()
            self._telemetry.instance_refused(reason, float(seconds))
        else:
            log.debug("unknown note from a receiver process: %r", message[:80])
