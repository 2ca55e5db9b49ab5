"""The receiver processes of a running router, started and watched by the main process.

Each receiver process listens as every receiver of the router (``receiver:`` and each
``receivers:`` entry), one listener per port. Each port is reserved first: a plain bind
proves nobody else listens on it, then a socket bound with ``SO_REUSEPORT`` (never
listening) holds it — a configured port 0 becomes a real one here — and every receiver
process listens on it beside the others. A receiver process
that dies is started again (after 1 s, doubling up to 30 s while it keeps dying young);
the others keep accepting meanwhile.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from dde.config import ReceiverSettings, ReceivingAE

log = logging.getLogger(__name__)

READY = "ready"
"""What a receiver process prints on stdout once it listens."""
RECEIVER_MODULE = "dde.runtime.receiver_process"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
RESTART_FIRST = 1.0
RESTART_CAP = 30.0
YOUNG_SECONDS = 10.0


class ReceiverStartError(OSError):
    """A receiver process did not come up; the message says why."""


def reserve_port(host: str, port: int) -> socket.socket:
    """Check that nobody listens on ``(host, port)`` and hold it for the receiver processes;
    raise OSError (EADDRINUSE …) when it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as check:
        check.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        check.bind((host, port))
        if port == 0:
            port = int(check.getsockname()[1])
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, port))
    except OSError:
        holder.close()
        raise
    return holder


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_delay = RESTART_FIRST
        self.restart_at: float | None = None


class ReceiverPool:
    """``count`` receiver processes, each listening on every receiver's port; the same face
    as :class:`~dde.receiving.receivers.Receivers` (``port``, ``ports``, ``running``,
    ``start``, ``stop``, ``settings``)."""

    def __init__(self, receivers: list[ReceivingAE], count: int, home: Path,
                 config_file: Path | None, notify: str, verbose: bool = False) -> None:
        self._receivers = receivers
        self.settings: ReceiverSettings = receivers[0].settings
        """The main receiver's settings."""
        self._count = count
        self._home = home
        self._config_file = config_file
        self._notify = notify
        self._verbose = verbose
        self._holders: dict[str, socket.socket] = {}
        self._children = [_Child(i) for i in range(count)]
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The main receiver's port."""
        return self.ports[self._receivers[0].name]

    @property
    def ports(self) -> dict[str, int]:
        """Each receiver's port (the reserved one once started), by receiver name."""
        return {r.name: int(self._holders[r.name].getsockname()[1]) if r.name in self._holders
                else r.settings.port for r in self._receivers}

    @property
    def processes(self) -> int:
        """How many receiver processes this pool keeps running."""
        return self._count

    @property
    def running(self) -> bool:
        """Whether at least one receiver process is up."""
        return any(c.process is not None and c.process.poll() is None
                   for c in list(self._children))

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", RECEIVER_MODULE, "--home", str(self._home),
                "--notify", self._notify, "--parent", str(os.getpid())]
        for name, port in self.ports.items():
            argv += ["--port", f"{name}={port}"]
        if self._config_file is not None:
            argv += ["--config", str(self._config_file)]
        if self._verbose:
            argv.append("--verbose")
        return argv

    def _spawn(self, child: _Child) -> None:
        child.process = subprocess.Popen(self._argv(), stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL)
        child.started_at = time.monotonic()
        child.restart_at = None
        self._await_ready(child)

    @staticmethod
    def _await_ready(child: _Child) -> None:
        process = child.process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                line = process.stdout.readline()
                break
            if process.poll() is not None:
                break
        if line.strip().decode(errors="replace") != READY:
            if process.poll() is None:
                process.kill()
            process.wait()
            raise ReceiverStartError(
                f"receiver process {child.index} did not start (exit code "
                f"{process.returncode}); see the log above")
        process.stdout.close()

    def start(self) -> None:
        try:
            for receiver in self._receivers:
                try:
                    self._holders[receiver.name] = reserve_port(receiver.settings.host,
                                                                receiver.settings.port)
                except OSError as exc:
                    exc.add_note(f"receiver {receiver.name} ({receiver.settings.ae_title} on "
                                 f"{receiver.settings.host}:{receiver.settings.port})")
                    raise
            for child in self._children:
                self._spawn(child)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="receiver-pool",
                                         daemon=True)
        self._watcher.start()
        ports = self.ports
        for receiver in self._receivers:
            log.info("receiving as %s on %s:%d in %d process(es)%s (receiver %s)",
                     receiver.settings.ae_title, receiver.settings.host, ports[receiver.name],
                     self._count, " (TLS)" if receiver.settings.tls.enabled else "",
                     receiver.name)

    def _watch(self) -> None:
        while not self._stopped.wait(0.25):
            for child in self._children:
                if self._stopped.is_set():
                    return
                self._look_after(child)

    def _look_after(self, child: _Child) -> None:
        process = child.process
        now = time.monotonic()
        if process is not None and process.poll() is None:
            if now - child.started_at > YOUNG_SECONDS:
                child.restart_delay = RESTART_FIRST
            return
        if child.restart_at is None:
            code = process.returncode if process is not None else None
            log.error("receiver process %d ended (exit code %s); starting it again in %.0f s",
                      child.index, code, child.restart_delay)
            child.restart_at = now + child.restart_delay
            child.restart_delay = min(RESTART_CAP, child.restart_delay * 2)
            return
        if now >= child.restart_at:
            try:
                self._spawn(child)
                log.info("receiver process %d started again", child.index)
            except (OSError, ReceiverStartError) as exc:
                log.error("%s", exc)
                child.restart_at = None

    def stop(self) -> None:
        """SIGTERM every receiver process (each finishes the instance in hand), wait, then
        SIGKILL what is left; release the port."""
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.join(5)
        processes = [c.process for c in self._children
                     if c.process is not None and c.process.poll() is None]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("receiver process %d did not stop; killing it", process.pid)
                process.kill()
                process.wait()
        for holder in self._holders.values():
            holder.close()
        self._holders.clear()
