"""The reference deployment as detached processes: up, down, status, logs.

Parts (:mod:`dde.stack.parts`): one Orthanc per ``settings.stack.orthancs`` entry (named
by the endpoint it describes, :mod:`dde.stack.layout`) and the ``router`` (``python -m dde
--home HOME serve``); with several nodes (:mod:`dde.stack.cluster`) ``postgresql``,
``router-1`` … ``router-N`` and ``haproxy`` in place of the router. Each part has, in the
state folder:

- ``logs/PART.log``  its stdout and stderr, appended;
- ``run/PART.pid``   ``{"pid", "argv", "started_at"}`` while it runs (see ``process``);
- for an Orthanc, its configuration (written once, then the user's) and ``orthanc/NAME/``.

``up`` is idempotent: it starts only the parts not running, after checking their ports are
free, and waits until each answers (Orthanc: ``GET /system``; PostgreSQL: a connection;
router, and HAProxy through to one: a C-ECHO, then ``GET /healthz`` on its web port). If one
does not, everything this call started is stopped again. Parts start kind by kind
(PostgreSQL, Orthancs, routers, HAProxy) and stop in the reverse order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

from dde.config import EndpointSettings, Home, Settings
from dde.stack.cluster import (
    cluster_parts,
    haproxy_argv,
    managed_url,
    postgres_folder,
    postgres_ready,
    prepare_postgres,
    runs_postgres,
    write_node_home,
)
from dde.stack.errors import StackError
from dde.stack.layout import stack_orthancs
from dde.stack.logfollow import LogFollower
from dde.stack.orthanc import (
    OrthancProcess,
    orthanc_binary,
    read_orthanc_config,
    write_orthanc_config,
)
from dde.stack.parts import (
    ROUTER,
    START_ORDER,
    STOP_ORDER,
    Part,
    PartKind,
    more_receivers,
    router_ports,
)
from dde.stack.process import (
    POLL_SECONDS,
    PidRecord,
    log_size,
    log_tail,
    port_in_use,
    read_pid_file,
    spawn,
    stop_processes,
    write_pid_file,
)

ECHO_CALLING_AE = "DDE-STACK"
UP_TIMEOUT = 30.0
NODE_START_SECONDS = 15.0
"""More time to start for each router node past the first (they share 2 cores here)."""
STOP_TIMEOUT = 10.0
FOLLOW_POLL_SECONDS = 0.2
DEBIAN_ORTHANC_PORTS = (4242, 8042)


def stack_parts(home: Home, settings: Settings) -> list[Part]:
    """Every part: the Orthancs as configured, then the router, or (several nodes, or a
    ledger on the stack's own PostgreSQL) the parts of :func:`cluster_parts`."""
    parts = [
        Part(
            name=entry.name,
            ports=(entry.dicom_port, entry.http_port),
            log=home.logs_dir / f"{entry.name}.log",
            pid_file=home.run_dir / f"{entry.name}.pid",
            config=home.root / entry.config_file,
            orthanc=entry,
            storage_dir=home.orthanc_dir / entry.name,
            kind=PartKind.ORTHANC,
        )
        for entry in stack_orthancs(settings, home.config_file)
    ]
    if settings.stack.nodes > 1:
        return parts + cluster_parts(home, settings)
    if runs_postgres(home, settings):
        parts += [p for p in cluster_parts(home, settings) if p.kind is PartKind.POSTGRESQL]
    parts.append(
        Part(
            name=ROUTER,
            ports=router_ports(settings),
            log=home.logs_dir / f"{ROUTER}.log",
            pid_file=home.run_dir / f"{ROUTER}.pid",
            config=home.config_file,
            home=home.root,
            ae_title=settings.receiver.ae_title,
            more_receivers=more_receivers(settings),
        )
    )
    return parts


def _select(home: Home, settings: Settings, names: Sequence[str] | None) -> list[Part]:
    parts = stack_parts(home, settings)
    if names is None:
        return parts
    valid = [p.name for p in parts]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise StackError(
            f"unknown part {', '.join(unknown)}: the parts are {', '.join(valid)}"
        )
    return [p for p in parts if p.name in names]


def _check_settings(home: Home, settings: Settings, to_start: Sequence[Part]) -> None:
    names = [e.name for e in settings.stack.orthancs]
    taken = [p.name for p in stack_parts(home, settings) if p.kind is not PartKind.ORTHANC]
    if any(name in taken for name in names) or len(set(names)) != len(names):
        raise StackError(
            f"{home.config_file}: stack.orthancs must name each endpoint once, "
            f"and none {', '.join(repr(n) for n in taken)}"
        )
    for part in to_start:
        for port in part.ports:
            if not 0 < port < 65536:
                raise StackError(
                    f"{home.config_file}: {part.port_setting(port)} must be a fixed port "
                    f"(1-65535) for the stack, not {port}"
                )
    owners: dict[int, str] = {}
    for part in stack_parts(home, settings):
        for port in part.ports:
            if port in owners:
                raise StackError(
                    f"{home.config_file}: port {port} is configured for both "
                    f"{owners[port]} and {part.name}"
                )
            owners[port] = part.name


def _running_record(part: Part) -> PidRecord | None:
    record = read_pid_file(part.pid_file)
    return record if record is not None and record.running else None


def _stop(processes: Sequence[tuple[Part, PidRecord | None]], timeout: float) -> list[str]:
    """Stop the parts kind by kind (:data:`STOP_ORDER`: HAProxy, the routers together, the
    Orthancs together, PostgreSQL with a fast shutdown); remove the PID files."""
    stopped: list[str] = []
    for kind in STOP_ORDER:
        batch = [(p, r) for p, r in processes if p.kind is kind]
        first = signal.SIGINT if kind is PartKind.POSTGRESQL else signal.SIGTERM
        pids = stop_processes([(r.pid, r.argv) for _, r in batch if r is not None], timeout,
                              first_signal=first)
        for part, record in batch:
            if record is not None and record.pid in pids:
                stopped.append(part.name)
            part.pid_file.unlink(missing_ok=True)
    return stopped


# ---------------------------------------------------------------------------------------------
# status / down


def status(home: Home, settings: Settings) -> dict[str, dict[str, Any]]:
    """For each part: pid (when running), running, ports, log and config paths."""
    result: dict[str, dict[str, Any]] = {}
    for part in stack_parts(home, settings):
        record = _running_record(part)
        result[part.name] = {
            "pid": record.pid if record is not None else None,
            "running": record is not None,
            "ports": list(part.ports),
            "log": str(part.log),
            "config": str(part.config) if part.config is not None else None,
        }
    return result


def down(
    home: Home, settings: Settings, *, parts: Sequence[str] | None = None,
    timeout: float = STOP_TIMEOUT,
) -> dict[str, list[str]]:
    """Stop the running parts (the entry first, the ledger last) and remove their PID
    files."""
    selected = _select(home, settings, parts)
    stopped = _stop([(p, read_pid_file(p.pid_file)) for p in selected], timeout)
    not_running = [p.name for p in selected if p.name not in stopped]
    return {"stopped": stopped, "not_running": not_running}


# ---------------------------------------------------------------------------------------------
# up


@dataclass
class _Started:
    part: Part
    popen: subprocess.Popen[bytes]
    record: PidRecord
    log_offset: int
    orthanc: OrthancProcess | None = None

    def failure(self, what: str) -> StackError:
        tail = log_tail(self.part.log, since=self.log_offset) or "(empty)"
        return StackError(f"{self.part.name} {what}; last lines of {self.part.log}:\n{tail}")


def _port_refusal(part: Part, port: int, host: str, config_file: Path) -> StackError:
    if part.orthanc is not None and port in DEBIAN_ORTHANC_PORTS:
        hint = (
            "Debian's orthanc.service listens on 4242/8042 when installed: "
            "`systemctl disable --now orthanc`"
        )
    else:
        hint = f"`ss -ltnp 'sport = :{port}'` shows what holds it: stop it"
    return StackError(
        f"cannot start {part.name}: port {port} is already in use on {host} ({hint}, "
        f"or change {part.port_setting(port)} in {config_file})"
    )


def _prepare_orthanc(part: Part) -> None:
    """Write the part's configuration if absent; check it agrees with dde.yaml."""
    entry, config, storage = part.orthanc, part.config, part.storage_dir
    assert entry is not None and config is not None and storage is not None
    storage.mkdir(parents=True, exist_ok=True)
    write_orthanc_config(config, entry.name, entry.aet, entry.dicom_port, entry.http_port,
                         storage, entry.router)
    actual = read_orthanc_config(config)
    for key, expected in (("DicomPort", entry.dicom_port), ("HttpPort", entry.http_port)):
        found = actual.get(key)
        if found != expected:
            raise StackError(
                f"{config} has {key} {found} but dde.yaml says {expected} for {part.name}: "
                "make them agree (or delete the file to have it written again)"
            )


def _echo(port: int, called_ae: str, timeout: float = 2.0) -> bool:
    """Whether a C-ECHO to 127.0.0.1:port succeeds (the router's own engine)."""
    from dde.endpoints.dicom_sender import c_echo  # only the router's readiness needs it

    target = EndpointSettings(name="router", aet=called_ae, host="127.0.0.1", port=port)
    return c_echo(target, ECHO_CALLING_AE, timeout) is None


def _healthy(port: int, timeout: float = 2.0) -> bool:
    """Whether ``GET http://127.0.0.1:port/healthz`` answers 200 (ready)."""
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            return client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(started: _Started, home: Home, deadline: float) -> None:
    """Until the part answers: an Orthanc ``GET /system``; PostgreSQL a connection; a
    router (or HAProxy, through to one) a C-ECHO, then ``GET /healthz``."""
    if started.orthanc is not None:
        started.orthanc.wait_ready(timeout=max(deadline - time.monotonic(), 0.0))
    elif started.part.kind is PartKind.POSTGRESQL:
        _wait_postgres(started, home, deadline)
    else:
        _wait_router(started, deadline)


def _wait_postgres(started: _Started, home: Home, deadline: float) -> None:
    began = time.monotonic()
    while not postgres_ready(home):
        code = started.popen.poll()
        if code is not None:
            raise started.failure(f"exited with code {code} while starting")
        if time.monotonic() >= deadline:
            raise started.failure(f"did not accept connections on {managed_url(home)} "
                                  f"within {time.monotonic() - began:.0f} s")
        time.sleep(POLL_SECONDS)


def _wait_router(started: _Started, deadline: float) -> None:
    part = started.part
    port, called, web = part.dicom_port, part.ae_title, part.web_port
    began = time.monotonic()
    echoed = False
    while True:
        code = started.popen.poll()
        if code is not None:
            raise started.failure(f"exited with code {code} while starting")
        echoed = echoed or _echo(port, called)
        if echoed and (web is None or _healthy(web)):
            return
        if time.monotonic() >= deadline:
            what = (f"answer a C-ECHO ({ECHO_CALLING_AE} -> {called} at 127.0.0.1:{port})"
                    if not echoed else f"answer GET http://127.0.0.1:{web}/healthz with 200")
            raise started.failure(f"did not {what} within {time.monotonic() - began:.0f} s")
        time.sleep(POLL_SECONDS)


def _start(part: Part, home: Home, settings: Settings) -> _Started:
    offset = log_size(part.log)
    orthanc: OrthancProcess | None = None
    if part.orthanc is not None:
        assert part.config is not None
        orthanc = OrthancProcess(part.config, part.log, part.orthanc.http_port,
                                 part.orthanc.dicom_port, name=part.name)
        argv = orthanc.argv
        popen = orthanc.start()
    elif part.kind is PartKind.POSTGRESQL:
        argv, user = prepare_postgres(home)
        popen = spawn(argv, part.log, cwd=postgres_folder(home), user=user)
    elif part.kind is PartKind.HAPROXY:
        nodes = [p for p in stack_parts(home, settings) if p.kind is PartKind.ROUTER]
        argv = haproxy_argv(home, settings, nodes)
        popen = spawn(argv, part.log)
    else:
        router_home = part.home or home.root
        if router_home != home.root:
            write_node_home(home, settings, part)
        argv = [sys.executable, "-m", "dde", "--home", str(router_home), "serve"]
        popen = spawn(argv, part.log)
    record = PidRecord.now(popen.pid, argv)
    write_pid_file(part.pid_file, record)
    return _Started(part, popen, record, offset, orthanc)


def _stop_started(started: Sequence[_Started], timeout: float = STOP_TIMEOUT) -> list[str]:
    return _stop([(s.part, s.record) for s in started], timeout)


PORT_GRACE_SECONDS = 3.0


def _port_in_use_after_grace(port: int) -> str | None:
    """Like ``port_in_use``, but gives a process that is still exiting (a crashed part whose
    /proc entry is already gone while its sockets are not yet closed) a moment to let go."""
    deadline = time.monotonic() + PORT_GRACE_SECONDS
    while True:
        host = port_in_use(port)
        if host is None or time.monotonic() >= deadline:
            return host
        time.sleep(0.05)


def up(
    home: Home,
    settings: Settings,
    *,
    detach: bool,
    parts: Sequence[str] | None = None,
    timeout: float = UP_TIMEOUT,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[dict[str, list[str]]], None] | None = None,
) -> dict[str, list[str]]:
    """Start the parts that are not running and wait until every one answers.

    With ``detach`` it returns once they are up. Without, it stays in the foreground,
    printing the parts' new log lines, until Ctrl-C, SIGTERM or ``stop`` is set; then it
    stops what it started (the entry first, the ledger last) and returns. ``on_ready`` is
    called with the started and already running parts once everything answers (in both
    modes).
    """
    home.ensure()
    selected = _select(home, settings, parts)
    to_start = [p for p in selected if _running_record(p) is None]
    already = [p.name for p in selected if p not in to_start]
    _check_settings(home, settings, to_start)
    if any(p.orthanc is not None for p in to_start):
        orthanc_binary()  # fail early, with the install hint
    for part in to_start:
        for port in part.ports:
            host = _port_in_use_after_grace(port)
            if host is not None:
                raise _port_refusal(part, port, host, home.config_file)
    for part in to_start:
        if part.orthanc is not None:
            _prepare_orthanc(part)

    follower = LogFollower(selected, out, start_at_end=True)
    started: list[_Started] = []
    deadline = time.monotonic() + timeout + NODE_START_SECONDS * (settings.stack.nodes - 1)
    interrupted = False
    with _sigterm_interrupts(enabled=not detach):
        try:
            for kind in START_ORDER:  # a kind starts together, once the ones before answer
                batch = len(started)
                for part in (p for p in to_start if p.kind is kind):
                    started.append(_start(part, home, settings))
                for one in started[batch:]:
                    _wait_ready(one, home, deadline)
        except KeyboardInterrupt:
            if detach:
                _stop_started(started)
                raise
            interrupted = True  # in the foreground, Ctrl-C while starting is a normal stop
        except BaseException:
            _stop_started(started)
            raise
    result = {"started": [s.part.name for s in started], "already_running": already}
    if not interrupted and on_ready is not None:
        on_ready(result)
    if detach:
        return result
    if not interrupted:
        _foreground(follower, started, stop)
    result["stopped"] = _stop_started(started)
    follower.poll()  # their last words
    return result


@contextmanager
def _sigterm_interrupts(enabled: bool = True) -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt like Ctrl-C (main thread only)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _foreground(
    follower: LogFollower, started: Sequence[_Started], stop: threading.Event | None
) -> None:
    reported: set[str] = set()
    stop = stop or threading.Event()
    with _sigterm_interrupts():
        try:
            while not stop.is_set():
                follower.poll()
                for one in started:
                    code = one.popen.poll()
                    if code is not None and one.part.name not in reported:
                        reported.add(one.part.name)
                        follower.say(one.part.name, f"exited with code {code}")
                stop.wait(FOLLOW_POLL_SECONDS)
        except KeyboardInterrupt:
            pass
        follower.poll()


# ---------------------------------------------------------------------------------------------
# logs


def logs(
    home: Home,
    settings: Settings,
    part: str | None = None,
    follow: bool = False,
    *,
    lines: int | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Print the logs of every part (prefixed) or of one; ``follow`` until Ctrl-C or ``stop``."""
    selected = _select(home, settings, None if part is None else [part])
    follower = LogFollower(selected, out, prefix=part is None)
    if lines is not None:
        follower.skip_to_last(lines)
    follower.poll()
    if not follow:
        return
    stop = stop or threading.Event()
    with _sigterm_interrupts():
        try:
            while not stop.is_set():
                stop.wait(FOLLOW_POLL_SECONDS)
                follower.poll()
        except KeyboardInterrupt:
            pass
