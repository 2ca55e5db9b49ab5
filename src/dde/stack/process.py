"""Detached processes: spawning, PID files, stopping, port checks and log tails.

A part of the stack runs as its own session (``start_new_session``), so that a Ctrl-C in the
terminal that started it reaches the supervisor only, which then stops the parts in order.
Its stdout and stderr are appended to its log file.

A PID file holds ``{"pid", "argv", "started_at"}``. A PID counts as ours only while
``/proc/PID/cmdline`` equals the recorded argv: a PID reused by an unrelated process, or a
zombie (empty cmdline), is not ours.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dde.stack.errors import StackError

POLL_SECONDS = 0.05
PORT_CHECK_HOSTS = ("127.0.0.1", "0.0.0.0")

# Popen handles of the processes this interpreter spawned, so that they are reaped when they
# exit (and Python does not warn about a child still running when a handle is collected).
_children: dict[int, subprocess.Popen[bytes]] = {}


def child_environment() -> dict[str, str]:
    """The parent's environment plus ``TCP_NODELAY=1`` (DCMTK leaves Nagle on otherwise)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def spawn(argv: Sequence[str], log_path: Path, cwd: Path | None = None,
          user: tuple[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log_path``; as
    ``user`` (user, group) when given."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(),
                cwd=cwd,
                start_new_session=True,
                user=user[0] if user else None,
                group=user[1] if user else None,
            )
        except OSError as exc:
            raise StackError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    _children[popen.pid] = popen
    return popen


def proc_cmdline(pid: int) -> list[str] | None:
    """The command line of a live process, or None (no such process, or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="surrogateescape").split("\0")


def _reap(pid: int) -> None:
    """Reap ``pid`` if this interpreter spawned it and it exited (else it stays a zombie,
    which ``proc_cmdline`` already reports as gone)."""
    popen = _children.get(pid)
    if popen is not None and popen.poll() is not None:
        del _children[pid]


def is_running(pid: int, argv: Sequence[str]) -> bool:
    """Whether ``pid`` is alive and still runs ``argv`` (the PID reuse guard)."""
    _reap(pid)
    return proc_cmdline(pid) == list(argv)


def stop_processes(
    processes: Sequence[tuple[int, Sequence[str]]], timeout: float = 10.0,
    first_signal: signal.Signals = signal.SIGTERM,
) -> list[int]:
    """``first_signal`` (SIGTERM) to each ``(pid, argv)`` still ours, wait up to
    ``timeout`` s, then SIGKILL.

    The processes are signalled together and stop in parallel. Returns the PIDs that were
    running (and are now stopped).
    """
    alive = [(pid, list(argv)) for pid, argv in processes if is_running(pid, argv)]
    stopped = [pid for pid, _ in alive]
    for sig, wait in ((first_signal, timeout), (signal.SIGKILL, 5.0)):
        for pid, _ in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            alive = [(pid, argv) for pid, argv in alive if is_running(pid, argv)]
            if alive:
                time.sleep(POLL_SECONDS)
        if not alive:
            return stopped
    pids = ", ".join(str(pid) for pid, _ in alive)
    raise StackError(f"process {pids} did not stop, even after SIGKILL")


def stop_process(pid: int, argv: Sequence[str], timeout: float = 10.0) -> bool:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL. False if it was not running."""
    return bool(stop_processes([(pid, argv)], timeout))


def offset_of_last_lines(path: Path, lines: int) -> int:
    """The byte offset in ``path`` where its last ``lines`` lines start (within 1 MiB)."""
    size = log_size(path)
    if lines <= 0:
        return size
    start = max(size - 1024 * 1024, 0)
    try:
        with open(path, "rb") as log:
            log.seek(start)
            data = log.read(size - start)
    except OSError:
        return size
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    position = end
    for _ in range(lines):
        position = data.rfind(b"\n", 0, position)
        if position < 0:
            return start
    return start + position + 1


@dataclass(frozen=True)
class PidRecord:
    pid: int
    argv: list[str]
    started_at: str

    @classmethod
    def now(cls, pid: int, argv: Sequence[str]) -> PidRecord:
        return cls(pid, list(argv), datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def running(self) -> bool:
        return is_running(self.pid, self.argv)


def write_pid_file(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(
        json.dumps({"pid": record.pid, "argv": record.argv, "started_at": record.started_at})
    )
    os.replace(tmp, path)


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in ``path``; None when absent or unreadable (treated as stale)."""
    try:
        data = json.loads(path.read_text())
        pid, argv, started_at = data["pid"], data["argv"], data.get("started_at", "")
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(pid, int) or not isinstance(argv, list) or not argv:
        return None
    if not all(isinstance(a, str) for a in argv):
        return None
    return PidRecord(pid, [str(a) for a in argv], str(started_at))


def port_in_use(port: int) -> str | None:
    """The first of 127.0.0.1 / 0.0.0.0 where ``port`` cannot be bound, or None if free.

    ``SO_REUSEADDR`` ignores connections in TIME_WAIT; a listening socket still blocks.
    """
    for host in PORT_CHECK_HOSTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return host
                raise StackError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return None


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_tail(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written after byte offset ``since``."""
    try:
        with open(path, "rb") as log:
            log.seek(max(since, log_size(path) - 64 * 1024))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
