"""Helpers for fault-injection tests: a destination that never answers, storescu's own
record of which files it got a success response for, and ledger look-ups by state."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom import dcmread

from dde.store.ledger import Ledger
from tests.support.orthanc import STORESCU

# DCMTK storescu -v writes to stderr, per file:
#   I: Sending file: /path/img00001.dcm
#   I: Sending Store Request (MsgID 1, CT)
#   I: Received Store Response (Success)
_SENDING = re.compile(r"^I: Sending file: (?P<path>.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((?P<status>[^)]*)\)")


def sop_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def sop_instance_uids(paths: Iterable[Path]) -> dict[str, Path]:
    return {sop_instance_uid(p): p for p in paths}


def acknowledged_files(storescu_log: str) -> list[Path]:
    """The files storescu got a C-STORE-RSP with status Success for, in sending order."""
    acknowledged: list[Path] = []
    current: Path | None = None
    for line in storescu_log.splitlines():
        sending = _SENDING.match(line)
        if sending:
            current = Path(sending.group("path"))
            continue
        response = _RESPONSE.match(line)
        if response and current is not None:
            if response.group("status") == "Success":
                acknowledged.append(current)
            current = None
    return acknowledged


@dataclass
class StorescuRun:
    """A DCMTK storescu started in the background, its ``-v`` log in a file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def acknowledged(self) -> list[Path]:
        return acknowledged_files(self.log())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_storescu(files: Sequence[Path], port: int, called_ae: str, log_path: Path,
                   *options: str) -> StorescuRun:
    argv = [STORESCU, "-v", *options, "-aet", "TEST_SCU", "-aec", called_ae, "127.0.0.1",
            str(port), *(str(f) for f in files)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TCP_NODELAY": "1"})
    return StorescuRun(process, log_path)


class BlackHole:
    """A TCP server that accepts connections and reads whatever comes, never answering.

    To a DICOM requestor it is a peer that took the connection and then went silent (a hung
    PACS, a firewall that black-holes after the handshake).
    """

    def __init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients: list[socket.socket] = []
        self.connections = 0
        self.bytes_received = 0
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)

    def __enter__(self) -> BlackHole:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
                self.connections += 1
            threading.Thread(target=self._read, args=(client,), daemon=True).start()

    def _read(self, client: socket.socket) -> None:
        client.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = client.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.bytes_received += len(data)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join(5)


def deliveries(ledger: Ledger, endpoint: str | None = None,
               state: str | None = None) -> list[dict[str, Any]]:
    """Delivery rows joined with their SOP Instance UID, filtered by endpoint and state."""
    keys = ("id", "endpoint", "role", "state", "attempts", "last_error", "sop_instance_uid")
    return [{key: getattr(d, key) for key in keys}
            for d in ledger.diagnostics.deliveries(endpoint=endpoint, state=state)]


def ledger_sop_instance_uids(ledger: Ledger) -> set[str]:
    return ledger.diagnostics.sop_instance_uids()


def state_counts(ledger: Ledger) -> dict[str, int]:
    return ledger.diagnostics.delivery_states()


class HangingStorageSCP:
    """A DICOM storage SCP that accepts associations but holds every C-STORE unanswered
    until :meth:`answer` is called; from then on it stores nothing and answers success."""

    def __init__(self, ae_title: str = "STUCK") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.ae_title = ae_title
        self._answer = threading.Event()
        self._lock = threading.Lock()
        self.requests = 0
        self.answered: set[str] = set()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.network_timeout = 120
        ae.dimse_timeout = 120
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        assert server is not None
        self._server = server
        self.port = int(self._server.server_address[1])

    def _on_store(self, event: Any) -> int:
        with self._lock:
            self.requests += 1
        self._answer.wait(120)
        with self._lock:
            self.answered.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def answer(self) -> None:
        self._answer.set()

    def endpoint(self, name: str | None = None) -> dict[str, Any]:
        return {"name": name or self.ae_title, "aet": self.ae_title, "host": "127.0.0.1",
                "port": self.port, "groups": []}

    def close(self) -> None:
        self._answer.set()
        self._server.shutdown()


class SelectiveHangingSCP:
    """A DICOM storage SCP that never answers the C-STOREs of the SOP Instance UIDs in
    ``hang`` (each is held until :meth:`close`, or ``hold`` seconds) and answers every other
    one with success at once; it counts the C-STOREs in flight at the same moment.

    To the router it is a PACS that chokes on one instance (Orthanc and an odd-length
    fragment) and takes the others."""

    def __init__(self, hang: Iterable[str], ae_title: str = "CHOKES", hold: float = 120.0,
                 delay: float = 0.0) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.ae_title = ae_title
        self.hang = set(hang)
        self._hold = hold
        self._delay = delay
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.answered: dict[str, float] = {}
        """SOP Instance UID → when it was answered (time.time())."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.associations = 0
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.network_timeout = hold + 10
        ae.dimse_timeout = hold + 10
        ae.maximum_associations = 32
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                               (evt.EVT_ACCEPTED, self._on_accepted)])
        assert server is not None
        self._server = server
        self.port = int(self._server.server_address[1])

    def _on_accepted(self, event: Any) -> None:
        with self._lock:
            self.associations += 1

    def _on_store(self, event: Any) -> int:
        import time

        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.requests[uid] = self.requests.get(uid, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if uid in self.hang:
                self._closed.wait(self._hold)
                return 0xA700
            if self._delay:
                time.sleep(self._delay)
            with self._lock:
                self.answered.setdefault(uid, time.time())
            return 0x0000
        finally:
            with self._lock:
                self.in_flight -= 1

    def endpoint(self, name: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"name": name or self.ae_title, "aet": self.ae_title, "host": "127.0.0.1",
                "port": self.port, "groups": [], **extra}

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
