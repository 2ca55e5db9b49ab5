"""Throughput of the router against Orthanc alone and Orthanc as a router, in one run.

    .venv/bin/python benchmarks/throughput.py [--rounds 3] [--only router,peer] [--json out.json]

DCMTK's storescu (``/usr/bin/storescu``, ``TCP_NODELAY=1``) is the sender everywhere. Every
round starts fresh Orthancs and a fresh router (``python -m dde --home H serve``) on free
loopback ports; all paths of a run send the same generated data. Cases (``--only``):

* ``direct``    storescu → Orthanc 1, one association (the "no router" limit)
* ``router``    storescu → router → 2 storage Orthancs + probe: ``router_ack`` (until storescu
                exits) and ``router_e2e`` (until every instance is in a storage and the probe)
* ``peer``      storescu → an Orthanc routing with Lua (OnStoredInstance → SendToModality to a
                storage and the probe, then Delete): ``peer_e2e``
* ``small``     many 64×64 instances: one association and ``--senders`` in parallel, to the
                router (ack and e2e) and straight to Orthanc 1
* ``latency``   per-instance C-STORE ack latency from storescu's own timestamped log (direct
                and router), beside the router's ``dde_ack_latency_seconds`` histogram
* ``gigabyte``  one multi-frame instance of ``--gigabyte-mb`` MB, written on the fly, sent to
                the router: ack time, e2e, the router's baseline and peak RSS (all processes)
* ``backlog``   the ``router`` case with ``--backlog`` pending deliveries to an endpoint that
                is down already in the ledger (runs ``router`` too, its baseline)
* ``alone``     the receiver on its own: the 0.5 MB CT and the 64×64 batches (one
                association) to a router whose only destination never answers (nothing is
                delivered): ``alone_ack`` and ``alone_small_ack``, what receiving costs
                without delivery competing for the CPU (runs ``direct`` and ``small``'s
                direct baseline too)
* ``cpu``       the 64×64 batch over one association, direct and through the router to
                a storage and the probe, with the CPU seconds of every process (storescu,
                the router's main and receiver processes, each Orthanc) per instance
* ``nodes``     the 64×64 batch from ``--senders`` storescu at once through HAProxy (TCP
                mode, round robin) to 1, 2 and 3 router nodes sharing one PostgreSQL ledger
                and one spool folder (``nodes_N_ack``, ``nodes_N_e2e``), beside one node on
                SQLite and direct (4 senders)
* ``stow-in``   the CT batch to the router by STOW-RS (``POST /dicom-web/studies``,
                ``--stow-per-request`` instances per request over one kept-alive HTTP
                connection, each request answered only after its instances are durable) and
                by C-STORE (storescu, one association), each to a fresh deployment:
                ``stow_ack``/``stow_e2e`` beside ``stow_cstore_ack``/``stow_cstore_e2e``;
                "× direct" of the STOW rows is their speed against C-STORE's
* ``stow-out``  the CT batch through a router to one Orthanc with the DICOMweb plugin, once
                delivered by STOW-RS (kind ``dicomweb``: ``stow_out_e2e``) and once by C-STORE
                (kind ``dicom``: ``stow_out_cstore_e2e``); the "× direct" column of
                ``stow_out_e2e`` is its speed against ``stow_out_cstore_e2e`` (the STOW-RS out
                rate against C-STORE)
* ``sustained`` ``--sustained-seconds`` of continuous sending (two storescu loops of 128×128
                CT) to the router, once with ``delivery.associations: 1`` and once with the
                default: the probe's pending deliveries and the spool sampled every
                ``--sample-seconds``, the trend printed, PASS when the backlog at the end is
                bounded (not growing), then the time to drain it

Prints a table, the headline ratios against the targets, and the same as JSON on stdout;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dde.config import Home, parse_settings
from dde.stack.orthanc import OrthancProcess, render_orthanc_config
from dde.stack.process import port_in_use
from dde.store.ledger import Ledger
from dde.store.records import NewInstance, SeedDelivery, SeedInstance
from dde.synthetic import write_large_instance, write_series
from dde.web.auth import load_token

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.orthanc import (  # noqa: E402
    RunningOrthanc,
    dicomweb_config,
    free_port,
    start_orthanc,
)
from tests.support.postgres import (  # noqa: E402
    PostgresServer,
    remove_postgres,
    start_postgres,
)
from tests.support.router import (  # noqa: E402
    ROUTER_AET,
    RouterProcess,
    endpoint_for,
    router_settings,
    write_router_home,
)

STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"
SENDER_ENV = {**os.environ, "TCP_NODELAY": "1"}
POLL_SECONDS = 0.05
RSS_SAMPLE_SECONDS = 0.05
ARRIVAL_TIMEOUT = 600.0
GIGABYTE_TIMEOUT = 1800.0
CASES = ("direct", "router", "peer", "small", "latency", "gigabyte", "backlog", "alone", "cpu",
         "nodes", "stow-in", "stow-out", "sustained")
LUA_MARKER = "dde-benchmark: Lua routing is running"
BACKLOG_ENDPOINT = "ARCHIVE"
MB = 1e6


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Files sent together, and their size."""

    files: list[Path]

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def megabytes(self) -> float:
        return sum(f.stat().st_size for f in self.files) / MB

    def shares(self, parts: int) -> list[list[Path]]:
        return [self.files[i::parts] for i in range(parts) if self.files[i::parts]]


# -- processes ----------------------------------------------------------------------------


def send(files: Sequence[Path], port: int, called: str, *options: str,
         timeout: float = 3600.0) -> float:
    """Send with DCMTK's storescu over one association; seconds until it exits."""
    argv = [STORESCU, *options, "-aet", "BENCH_SCU", "-aec", called, "127.0.0.1", str(port),
            *map(str, files)]
    started = time.perf_counter()
    result = subprocess.run(argv, env=SENDER_ENV, capture_output=True, text=True,
                            timeout=timeout)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu exited with {result.returncode}: {result.stderr[-2000:]}")
    return elapsed


def send_parallel(shares: list[list[Path]], port: int, called: str) -> float:
    """One storescu (one association) per share, all at once; seconds until all exit."""
    started = time.perf_counter()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for files in shares:
            argv = [STORESCU, "-aet", "BENCH_SCU", "-aec", called, "127.0.0.1", str(port),
                    *map(str, files)]
            processes.append(subprocess.Popen(argv, env=SENDER_ENV, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE))
        errors = [p.communicate(timeout=3600)[1] for p in processes]
        failures = [e for p, e in zip(processes, errors, strict=True) if p.returncode != 0]
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    if failures:
        raise RuntimeError(f"{len(failures)} storescu failed: {failures[0][-2000:]!r}")
    return elapsed


class Counter:
    """Instance counts of Orthancs over one kept-alive HTTP client."""

    def __init__(self) -> None:
        self._client = httpx.Client(timeout=30.0, trust_env=False)

    def count(self, orthanc: RunningOrthanc) -> int:
        response = self._client.get(f"{orthanc.url}/statistics")
        response.raise_for_status()
        return int(response.json()["CountInstances"])

    def close(self) -> None:
        self._client.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every POLL_SECONDS until true; RuntimeError at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(POLL_SECONDS)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue.extend(children.get(pid, []))
    return tree


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(root: int) -> float:
    return sum(status_kb(pid, "VmRSS") for pid in process_tree(root)) / 1024


@dataclass
class RssSampler:
    """Samples the summed VmRSS of a process tree every RSS_SAMPLE_SECONDS, and the VmHWM
    of every process seen in it."""

    root: int
    peak_sum_mb: float = 0.0
    hwm_kb: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        pids = process_tree(self.root)
        self.peak_sum_mb = max(self.peak_sum_mb,
                               sum(status_kb(pid, "VmRSS") for pid in pids) / 1024)
        for pid in pids:
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), status_kb(pid, "VmHWM"))

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @property
    def hwm_sum_mb(self) -> float:
        return sum(self.hwm_kb.values()) / 1024


def stop_router(router: RouterProcess) -> None:
    """SIGTERM the router, then SIGKILL it and every descendant still there."""
    process = router.process
    if process is None:
        return
    family = process_tree(process.pid)[1:]
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
    if process.poll() is None:
        process.kill()
    process.wait()
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def orthanc(stack: contextlib.ExitStack, folder: Path, name: str) -> RunningOrthanc:
    running = start_orthanc(folder, name)
    stack.callback(running.kill)
    return running


# -- deployments ----------------------------------------------------------------------------


@dataclass
class Deployment:
    """The router in front of two storage Orthancs and a probe."""

    storages: list[RunningOrthanc]
    probe: RunningOrthanc
    router: RouterProcess
    port: int
    web_port: int
    home: Path

    @property
    def pid(self) -> int:
        assert self.router.process is not None
        return self.router.process.pid

    def arrived(self, counter: Counter, count: int) -> bool:
        return (counter.count(self.probe) >= count
                and sum(counter.count(o) for o in self.storages) >= count)


Prepare = Callable[[Path, list[RunningOrthanc], RunningOrthanc], dict[str, Any]]
"""Called with (router home, storages, probe) before the router starts; returns more
settings overrides."""


def start_deployment(stack: contextlib.ExitStack, folder: Path,
                     prepare: Prepare | None = None) -> Deployment:
    """Start storages, probe and router (its web side on a known port)."""
    storages = [orthanc(stack, folder, "ORTHANC1"), orthanc(stack, folder, "ORTHANC2")]
    probe = orthanc(stack, folder, "ORTHANC-PROBE")
    port, web_port = free_port(), free_port()
    home = folder / "router-home"
    overrides: dict[str, Any] = {"web": {"port": web_port}}
    if prepare is not None:
        overrides.update(prepare(home, storages, probe))
    write_router_home(home, router_settings(storages, probe, port=port, **overrides))
    router = RouterProcess(home, port, folder / "router.log")
    stack.callback(stop_router, router)
    router.start(timeout=120)
    return Deployment(storages, probe, router, port, web_port, home)


def start_peer(stack: contextlib.ExitStack, folder: Path, storage: RunningOrthanc,
               probe: RunningOrthanc) -> RunningOrthanc:
    """An Orthanc routing with the usual Lua recipe to ``storage`` and ``probe``."""
    base = folder / "ORTHANC-PEER"
    base.mkdir(parents=True)
    lua = base / "route.lua"
    lua.write_text(
        "local announced = false\n"
        "function OnStoredInstance(instanceId, tags, metadata, origin)\n"
        f"  if not announced then print('{LUA_MARKER}'); announced = true end\n"
        "  SendToModality(instanceId, 'storage1')\n"
        "  SendToModality(instanceId, 'probe')\n"
        "  Delete(instanceId)\n"
        "end\n")
    dicom_port, http_port = free_port(), free_port()
    config = render_orthanc_config("ORTHANC-PEER", "ORTHANC-PEER", dicom_port, http_port,
                                   base / "storage")
    config["LuaScripts"] = [str(lua)]
    config["DicomModalities"] = {
        "storage1": [storage.aet, "127.0.0.1", storage.dicom_port],
        "probe": [probe.aet, "127.0.0.1", probe.dicom_port],
    }
    (base / "orthanc.json").write_text(json.dumps(config, indent=2))
    process = OrthancProcess(base / "orthanc.json", base / "orthanc.log", http_port, dicom_port,
                             name="ORTHANC-PEER")
    stack.callback(process.kill)
    process.start()
    process.wait_ready()
    return RunningOrthanc("ORTHANC-PEER", "ORTHANC-PEER", dicom_port, http_port, process.url,
                          process, base / "storage")


# -- cases ----------------------------------------------------------------------------------

Times = dict[str, float]


def direct_time(folder: Path, batch: Batch, parallel: int = 1) -> float:
    """storescu → Orthanc 1; seconds until the sender(s) exit, count verified."""
    with contextlib.ExitStack() as stack:
        target = orthanc(stack, folder, "ORTHANC1")
        counter = Counter()
        stack.callback(counter.close)
        if parallel > 1:
            seconds = send_parallel(batch.shares(parallel), target.dicom_port, target.aet)
        else:
            seconds = send(batch.files, target.dicom_port, target.aet)
        wait_for(lambda: counter.count(target) >= batch.count, 30,
                 f"{batch.count} instances in Orthanc 1")
        return seconds


def router_times(folder: Path, batch: Batch, parallel: int = 1,
                 prepare: Prepare | None = None) -> tuple[float, float]:
    """storescu → router: (seconds until the sender(s) exit, until all arrived)."""
    with contextlib.ExitStack() as stack:
        deployment = start_deployment(stack, folder, prepare)
        counter = Counter()
        stack.callback(counter.close)
        started = time.perf_counter()
        if parallel > 1:
            ack = send_parallel(batch.shares(parallel), deployment.port, ROUTER_AET)
        else:
            ack = send(batch.files, deployment.port, ROUTER_AET)
        wait_for(lambda: deployment.arrived(counter, batch.count), ARRIVAL_TIMEOUT,
                 f"{batch.count} instances in a storage and the probe")
        return ack, time.perf_counter() - started


def case_direct(folder: Path, data: Data, args: argparse.Namespace) -> Times:
    return {"direct": direct_time(folder, data.ct)}


def case_router(folder: Path, data: Data, args: argparse.Namespace) -> Times:
    ack, e2e = router_times(folder, data.ct)
    return {"router_ack": ack, "router_e2e": e2e}


def case_peer(folder: Path, data: Data, args: argparse.Namespace) -> Times:
    with contextlib.ExitStack() as stack:
        storage = orthanc(stack, folder, "ORTHANC1")
        probe = orthanc(stack, folder, "ORTHANC-PROBE")
        peer = start_peer(stack, folder, storage, probe)
        counter = Counter()
        stack.callback(counter.close)
        count = data.ct.count
        started = time.perf_counter()
        send(data.ct.files, peer.dicom_port, peer.aet)
        wait_for(lambda: counter.count(storage) >= count and counter.count(probe) >= count,
                 ARRIVAL_TIMEOUT, f"{count} instances routed by the Lua peer")
        seconds = time.perf_counter() - started
        if LUA_MARKER not in peer.process.log_path.read_text(errors="replace"):
            raise RuntimeError(f"the peer's Lua script did not run: {peer.process.log_tail()}")
        return {"peer_e2e": seconds}


def case_small(folder: Path, data: Data, args: argparse.Namespace) -> Times:
    small, senders = data.small, args.senders
    ack_1, e2e_1 = router_times(folder / "router-1", small)
    ack_n, e2e_n = router_times(folder / "router-n", small, parallel=senders)
    return {
        "small_ack_1": ack_1, "small_e2e_1": e2e_1,
        "small_ack_par": ack_n, "small_e2e_par": e2e_n,
        "small_direct_1": direct_time(folder / "direct-1", small),
        "small_direct_par": direct_time(folder / "direct-n", small, parallel=senders),
    }


STOW_BOUNDARY = "dde-benchmark-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'


def stow_body(files: Sequence[Path]) -> Iterator[bytes]:
    """A STOW-RS body of these Part-10 files, read as it is sent."""
    for path in files:
        yield f"\r\n--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield path.read_bytes()
    yield f"\r\n--{STOW_BOUNDARY}--\r\n".encode()


def stow_times(folder: Path, batch: Batch, per_request: int) -> tuple[float, float]:
    """STOW-RS → router, ``per_request`` instances per request, one request after the
    other on one connection: (seconds until the last answer, until all arrived)."""
    with contextlib.ExitStack() as stack:
        deployment = start_deployment(stack, folder)
        token = load_token(Home(deployment.home), create=False)
        client = httpx.Client(base_url=f"http://127.0.0.1:{deployment.web_port}",
                              trust_env=False, timeout=600.0,
                              headers={"Authorization": f"Bearer {token}"})
        stack.callback(client.close)

        def web_ready() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:  # not listening yet: C-ECHO answers first
                return False

        wait_for(web_ready, 30, "the router's web side")
        counter = Counter()
        stack.callback(counter.close)
        started = time.perf_counter()
        for first in range(0, batch.count, per_request):
            response = client.post("/dicom-web/studies", headers={"Content-Type": STOW_TYPE},
                                   content=stow_body(batch.files[first:first + per_request]))
            if response.status_code != 200:
                raise RuntimeError(f"STOW-RS answered {response.status_code}: "
                                   f"{response.text[:2000]}")
        ack = time.perf_counter() - started
        wait_for(lambda: deployment.arrived(counter, batch.count), ARRIVAL_TIMEOUT,
                 f"{batch.count} instances in a storage and the probe")
        return ack, time.perf_counter() - started


def one_destination_times(folder: Path, batch: Batch,
                          endpoint_of: Callable[[RunningOrthanc], dict[str, Any]]
                          ) -> tuple[float, float]:
    """storescu → a router whose only endpoint is ``endpoint_of(orthanc)``, an Orthanc with
    the DICOMweb plugin: (seconds until storescu exits, until all arrived)."""
    with contextlib.ExitStack() as stack:
        target = start_orthanc(folder, "ORTHANC1", extra=dicomweb_config())
        stack.callback(target.kill)
        port, home = free_port(), folder / "router-home"
        write_router_home(home, router_settings([], None, port=port,
                                                endpoints=[endpoint_of(target)]))
        router = RouterProcess(home, port, folder / "router.log")
        stack.callback(stop_router, router)
        router.start(timeout=120)
        counter = Counter()
        stack.callback(counter.close)
        started = time.perf_counter()
        ack = send(batch.files, port, ROUTER_AET)
        wait_for(lambda: counter.count(target) >= batch.count, ARRIVAL_TIMEOUT,
                 f"{batch.count} instances in the destination")
        return ack, time.perf_counter() - started


def case_stow(folder: Path, data: Data, args: argparse.Namespace) -> Times:
    stow_ack, stow_e2e = stow_times(folder / "stow", data.ct, args.stow_per_request)
    cstore_ack, cstore_e2e = router_times(folder / "c-store", data.ct)
    return {"stow_ack": stow_ack, "stow_e2e": stow_e2e,
            "stow_cstore_ack": cstore_ack, "stow_cstore_e2e": cstore_e2e}


def case_stow_out(folder: Path, data: Data, args: argparse.Namespace) -> Times:
    def dicomweb(target: RunningOrthanc) -> dict[str, Any]:
        return {"name": "WEB1", "kind": "dicomweb", "url": f"{target.url}/dicom-web",
                "groups": ["storage"]}

    _, stow = one_destination_times(folder / "stow", data.ct, dicomweb)
    _, cstore = one_destination_times(folder / "cstore", data.ct,
                                      lambda target: endpoint_for(target, ["storage"]))
    return {"stow_out_e2e": stow, "stow_out_cstore_e2e": cstore}


def alone_time(folder: Path, batch: Batch) -> float:
    """storescu → a router whose only destination is a closed port, kept "unknown" (health
    probes far apart, a breaker that never opens), so every instance is acknowledged and
    none is delivered: seconds until storescu exits."""
    with contextlib.ExitStack() as stack:
        port, closed = free_port(), free_port()
        home = folder / "router-home"
        settings = parse_settings({
            "receiver": {"host": "127.0.0.1", "port": port, "ae_title": ROUTER_AET},
            "endpoints": [{"name": "NOWHERE", "aet": "NOWHERE", "host": "127.0.0.1",
                           "port": closed, "groups": ["storage"]}],
            "health": {"interval_seconds": 3600, "failure_threshold": 1_000_000},
            "web": {"host": "127.0.0.1", "port": 0},
        })
        write_router_home(home, settings)
        router = RouterProcess(home, port, folder / "router.log")
        stack.callback(stop_router, router)
        router.start(timeout=120)
        return send(batch.files, port, ROUTER_AET)


def case_alone(folder: Path, data: Data, args: argparse.Namespace) -> Times:
    return {
        "alone_ack": alone_time(folder / "ct", data.ct),
        "alone_small_ack": alone_time(folder / "small", data.small),
        "direct": direct_time(folder / "direct", data.ct),
        "small_direct_1": direct_time(folder / "direct-1", data.small),
    }


def backlog_prepare(count: int, sample: Path) -> Prepare:
    """A down endpoint (group ``archive``, never routed to) with ``count`` pending
    deliveries already in the ledger."""

    def prepare(home: Path, storages: list[RunningOrthanc],
                probe: RunningOrthanc) -> dict[str, Any]:
        seed_backlog(home, count, sample)
        down = {"name": BACKLOG_ENDPOINT, "aet": BACKLOG_ENDPOINT, "host": "127.0.0.1",
                "port": free_port(), "groups": ["archive"]}
        return {"endpoints": [*(endpoint_for(o, ["storage"]) for o in storages),
                              endpoint_for(probe, ["probe"]), down]}

    return prepare


def seed_backlog(home: Path, count: int, sample: Path) -> None:
    """``count`` instances, each with one pending delivery to BACKLOG_ENDPOINT, inserted in
    one transaction into the ledger the router will open (all share one small spool file)."""
    spool_file = "backlog/backlog.dcm"
    (home / "spool" / "backlog").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample, home / "spool" / spool_file)
    now = time.time()
    size = sample.stat().st_size
    pending = (SeedDelivery(BACKLOG_ENDPOINT),)
    backlog = (SeedInstance(NewInstance(f"2.25.{10**20 + i}", "1.2.840.10008.5.1.4.1.1.2",
                                        "1.2.840.10008.1.2.1", "2.25.1", "2.25.2",
                                        "DDE-BACKLOG", "ACC-BACKLOG", "CT", "BACKLOG_SCU",
                                        ROUTER_AET, "127.0.0.1", spool_file, size, now),
                            "benchmark backlog", pending) for i in range(1, count + 1))
    with contextlib.closing(Ledger(home / "dde.sqlite3")) as ledger:
        ledger.diagnostics.seed(backlog)


def pending_to(database: Path, endpoint: str) -> int:
    with contextlib.closing(Ledger(database)) as ledger:
        return ledger.queue.queued_counts().get(endpoint, 0)


def case_backlog(folder: Path, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    prepare = backlog_prepare(args.backlog, data.ct.files[0])
    ack, e2e = router_times(folder, data.ct, prepare=prepare)
    still = pending_to(folder / "router-home" / "dde.sqlite3", BACKLOG_ENDPOINT)
    if still < args.backlog:
        raise RuntimeError(f"only {still} of the {args.backlog} backlog deliveries are still "
                           f"pending: the backlog did not stay in place")
    return {"backlog_ack": ack, "backlog_e2e": e2e, "backlog_pending_after": still}


# -- sustained ----------------------------------------------------------------------------

QUEUED = re.compile(r'^dde_queued_deliveries\{endpoint="(?P<name>[^"]+)"\} (?P<value>\S+)$')
DELIVERED = re.compile(r'^dde_delivered_total\{endpoint="(?P<name>[^"]+)"\} (?P<value>\S+)$')
SUSTAINED_BOUND = 500
"""PASS: the probe's backlog at the end is at most this, or not growing (see below)."""
SUSTAINED_GROWTH_PER_S = 2.0
DRAIN_TIMEOUT = 300.0


def metric_by_endpoint(pattern: re.Pattern[str], metrics: str) -> dict[str, float]:
    return {m.group("name"): float(m.group("value"))
            for m in map(pattern.match, metrics.splitlines()) if m}


def folder_megabytes(folder: Path) -> float:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total / MB


def sending_loop(files: list[Path], port: int, until: float, acked: list[int]) -> None:
    """storescu over ``files`` again and again until ``until``; adds what it sent."""
    while time.monotonic() < until:
        argv = [STORESCU, "-aet", "BENCH_SCU", "-aec", ROUTER_AET, "127.0.0.1", str(port),
                *map(str, files)]
        result = subprocess.run(argv, env=SENDER_ENV, capture_output=True, text=True,
                                timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(f"storescu exited with {result.returncode}: "
                               f"{result.stderr[-2000:]}")
        acked[0] += len(files)


def growth_per_second(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of pending over time (deliveries per second)."""
    if len(samples) < 2:
        return 0.0
    ts = [t for t, _ in samples]
    ys = [float(y) for _, y in samples]
    mean_t, mean_y = statistics.fmean(ts), statistics.fmean(ys)
    spread = sum((t - mean_t) ** 2 for t in ts)
    if not spread:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True)) / spread


def sustained_run(folder: Path, files: list[Path], seconds: float, sample: float,
                  associations: int | None) -> dict[str, Any]:
    """Send continuously for ``seconds``; sample the probe's backlog; wait for the drain."""
    label = "default" if associations is None else str(associations)
    delivery = {} if associations is None else {"associations": associations}

    def prepare(home: Path, storages: list[RunningOrthanc],
                probe: RunningOrthanc) -> dict[str, Any]:
        return {"delivery": delivery}

    with contextlib.ExitStack() as stack:
        deployment = start_deployment(stack, folder, prepare)
        probe = deployment.probe.name
        scrape_metrics(deployment.web_port)
        acked = [0, 0]
        until = time.monotonic() + seconds
        halves = [files[0::2], files[1::2]]
        errors: list[BaseException] = []

        def loop(index: int) -> None:
            counter = [0]
            try:
                sending_loop(halves[index], deployment.port, until, counter)
            except BaseException as exc:  # reported after the run
                errors.append(exc)
            acked[index] = counter[0]

        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(2)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        samples: list[tuple[float, int]] = []
        trend: list[dict[str, float]] = []
        while any(thread.is_alive() for thread in threads):
            time.sleep(sample)
            metrics = scrape_metrics(deployment.web_port)
            pending = int(metric_by_endpoint(QUEUED, metrics).get(probe, 0))
            elapsed = time.monotonic() - started
            spool = folder_megabytes(deployment.home / "spool")
            samples.append((elapsed, pending))
            trend.append({"t": round(elapsed, 1), "probe_pending": pending,
                          "spool_mb": round(spool, 1)})
            progress(f"sustained[associations {label}]: {elapsed:5.1f} s  probe pending "
                     f"{pending:6d}  spool {spool:7.1f} MB")
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"a sender failed: {errors[0]}")
        sent_seconds = time.monotonic() - started
        total = sum(acked)
        metrics = scrape_metrics(deployment.web_port)
        delivered = metric_by_endpoint(DELIVERED, metrics).get(probe, 0.0)
        drain_started = time.monotonic()

        def drained() -> bool:
            return int(metric_by_endpoint(QUEUED, scrape_metrics(
                deployment.web_port)).get(probe, 0)) == 0

        drain: float | None = None
        with contextlib.suppress(RuntimeError):
            wait_for(drained, DRAIN_TIMEOUT, "the probe's backlog drained")
            drain = time.monotonic() - drain_started
    second_half = [s for s in samples if s[0] >= seconds / 2]
    growth = growth_per_second(second_half)
    end = samples[-1][1] if samples else 0
    bounded = end <= SUSTAINED_BOUND or growth <= SUSTAINED_GROWTH_PER_S
    return {"associations": label, "seconds": sent_seconds, "acknowledged": total,
            "acknowledged_per_s": total / sent_seconds,
            "probe_delivered_per_s_while_sending": delivered / sent_seconds,
            "probe_pending_end": end, "probe_pending_max": max(p for _, p in samples),
            "growth_per_s_second_half": growth, "spool_mb_end": trend[-1]["spool_mb"],
            "drain_s": drain, "verdict": "PASS" if bounded else "FAIL", "trend": trend}


def case_sustained(folder: Path, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    progress(f"generating {args.sustained_files} CT instances of 128×128")
    files = write_series(folder / "data", args.sustained_files, rows=128, columns=128)
    runs = [sustained_run(folder / f"associations-{n or 'default'}", files,
                          args.sustained_seconds, args.sample_seconds, n)
            for n in args.sustained_associations]
    print("\nsustained sending: the probe's backlog (pending deliveries) over time", flush=True)
    for run in runs:
        print(f"  associations {run['associations']:>7}: acknowledged "
              f"{run['acknowledged_per_s']:.0f}/s, probe delivered "
              f"{run['probe_delivered_per_s_while_sending']:.0f}/s while sending; pending "
              f"at the end {run['probe_pending_end']} (max {run['probe_pending_max']}, "
              f"second half {run['growth_per_s_second_half']:+.1f}/s), spool "
              f"{run['spool_mb_end']:.0f} MB, drained in "
              f"{fmt(run['drain_s'], 1)} s: {run['verdict']}", flush=True)
        print("    trend: " + ", ".join(f"{p['t']:.0f}s:{p['probe_pending']}"
                                        for p in run["trend"]), flush=True)
    return {"sustained": {run["associations"]: run for run in runs},
            "sustained_verdict": runs[-1]["verdict"]}


# -- latency ----------------------------------------------------------------------------------

STORESCU_LOG_CONFIG = """\
log4cplus.rootLogger = DEBUG, logfile
log4cplus.appender.logfile = log4cplus::FileAppender
log4cplus.appender.logfile.File = {log}
log4cplus.appender.logfile.Append = false
log4cplus.appender.logfile.ImmediateFlush = true
log4cplus.appender.logfile.layout = log4cplus::PatternLayout
log4cplus.appender.logfile.layout.ConversionPattern = %D{{%H:%M:%S.%Q}} %m%n
"""
# %Q: milliseconds with a fraction, printed by this DCMTK (3.6.7) as "12:34:56.789.012".
STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) ")


def stamp_seconds(line: str) -> float:
    match = STAMP.match(line)
    if match is None:
        raise ValueError(f"no timestamp in storescu log line {line!r}")
    hours, minutes, seconds, millis, micros = map(int, match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1e3 + micros / 1e6


def store_latencies(log: str) -> list[float]:
    """Seconds from each "Sending Store Request" to its "Received Store Response"."""
    latencies: list[float] = []
    sent: float | None = None
    for line in log.splitlines():
        if "Sending Store Request" in line:
            sent = stamp_seconds(line)
        elif "Received Store Response" in line and sent is not None:
            latencies.append((stamp_seconds(line) - sent) % 86400)  # past midnight
            sent = None
    return latencies


def timed_send(folder: Path, files: Sequence[Path], port: int, called: str) -> list[float]:
    """Send with storescu logging timestamps at DEBUG; the per-instance ack latencies."""
    folder.mkdir(parents=True, exist_ok=True)
    log, config = folder / "storescu.log", folder / "storescu-log.cfg"
    config.write_text(STORESCU_LOG_CONFIG.format(log=log))
    send(files, port, called, "-lc", str(config))
    latencies = store_latencies(log.read_text(errors="replace"))
    if len(latencies) != len(files):
        raise RuntimeError(f"{len(latencies)} store responses in {log} for {len(files)} files")
    return latencies


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    return {"n": len(latencies), "p50_ms": 1e3 * statistics.median(latencies),
            "p99_ms": 1e3 * percentile(latencies, 0.99), "max_ms": 1e3 * max(latencies)}


BUCKET = re.compile(r'^dde_ack_latency_seconds_bucket\{le="([^"]+)"\}\s+(\S+)')


def histogram_p99_ms(metrics: str) -> tuple[float | None, int]:
    """The upper bound (ms) of the bucket holding the 99th percentile of
    ``dde_ack_latency_seconds`` (None: beyond the last finite bucket), and the count."""
    buckets = sorted((float(m.group(1)), float(m.group(2)))
                     for m in map(BUCKET.match, metrics.splitlines()) if m)
    if not buckets:
        raise RuntimeError("no dde_ack_latency_seconds histogram in /metrics")
    total = buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= 0.99 * total:
            return (None if math.isinf(bound) else bound * 1e3), int(total)
    return None, int(total)


def scrape_metrics(web_port: int) -> str:
    url = f"http://127.0.0.1:{web_port}/metrics"
    texts: list[str] = []

    def answered() -> bool:
        try:
            response = httpx.get(url, timeout=5.0, trust_env=False)
        except httpx.HTTPError:
            return False
        if response.status_code == 200:
            texts.append(response.text)
        return bool(texts)

    wait_for(answered, 30, f"router /metrics on {url}")
    return texts[0]


def case_latency(folder: Path, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        target = orthanc(stack, folder / "direct", "ORTHANC1")
        direct = timed_send(folder / "direct", data.ct.files, target.dicom_port, target.aet)
    with contextlib.ExitStack() as stack:
        deployment = start_deployment(stack, folder / "router")
        routed = timed_send(folder / "router", data.ct.files, deployment.port, ROUTER_AET)
        bound, observed = histogram_p99_ms(scrape_metrics(deployment.web_port))
    return {"latency": {"direct": latency_summary(direct), "router": latency_summary(routed),
                        "router_histogram_p99_ms": bound,
                        "router_histogram_count": observed}}


# -- nodes ------------------------------------------------------------------------------------

NODE_COUNTS = (1, 2, 3)
HAPROXY = "/usr/sbin/haproxy"


def start_haproxy(stack: contextlib.ExitStack, folder: Path, ports: list[int]) -> int:
    """HAProxy (Debian's) in TCP mode, round robin over ``ports``; the port it listens on."""
    port = free_port()
    servers = "".join(f"    server node{n} 127.0.0.1:{p} check inter 1s\n"
                      for n, p in enumerate(ports, 1))
    config = folder / "haproxy.cfg"
    config.write_text(
        "global\n    maxconn 512\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 300s\n    timeout server 300s\n    retries 3\n"
        "    option redispatch\n"
        f"frontend dicom\n    bind 127.0.0.1:{port}\n    default_backend routers\n"
        f"backend routers\n    balance roundrobin\n{servers}")
    log = (folder / "haproxy.log").open("ab")
    process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log,
                               stderr=subprocess.STDOUT, env=SENDER_ENV)
    log.close()
    stack.callback(process.wait)
    stack.callback(process.kill)

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited: {(folder / 'haproxy.log').read_text()}")
        return port_in_use(port) is not None

    wait_for(listening, 10, "haproxy listening")
    return port


def nodes_times(folder: Path, batch: Batch, nodes: int, senders: int,
                postgres: PostgresServer) -> tuple[float, float]:
    """``senders`` storescu → HAProxy → ``nodes`` router nodes sharing one PostgreSQL
    ledger and one spool folder: (seconds until the senders exit, until all arrived)."""
    with contextlib.ExitStack() as stack:
        storages = [orthanc(stack, folder, "ORTHANC1"), orthanc(stack, folder, "ORTHANC2")]
        probe = orthanc(stack, folder, "ORTHANC-PROBE")
        url = postgres.create_database()
        stack.callback(postgres.drop_database, url)
        ports = []
        for number in range(1, nodes + 1):
            port, home = free_port(), folder / f"node{number}"
            write_router_home(home, router_settings(
                storages, probe, port=port, web={"enabled": False},
                store={"backend": "postgresql", "url": url, "node": f"node{number}"},
                spool={"folder": str(folder / "spool")}))
            router = RouterProcess(home, port, folder / f"node{number}.log")
            stack.callback(stop_router, router)
            router.start(timeout=120)
            ports.append(port)
        entry = start_haproxy(stack, folder, ports)
        counter = Counter()
        stack.callback(counter.close)
        started = time.perf_counter()
        ack = send_parallel(batch.shares(senders), entry, ROUTER_AET)
        wait_for(lambda: (counter.count(probe) >= batch.count
                          and sum(counter.count(s) for s in storages) >= batch.count),
                 ARRIVAL_TIMEOUT, f"{batch.count} instances in a storage and the probe")
        return ack, time.perf_counter() - started


def case_nodes(folder: Path, data: Data, args: argparse.Namespace) -> Times:
    """The 64×64 batch from ``--senders`` storescu at once through HAProxy to 1, 2 and 3
    nodes on PostgreSQL; beside it the same through one node on SQLite, and direct."""
    postgres = start_postgres()
    try:
        times: Times = {}
        for nodes in NODE_COUNTS:
            ack, e2e = nodes_times(folder / f"nodes-{nodes}", data.small, nodes,
                                   args.senders, postgres)
            times[f"nodes_{nodes}_ack"], times[f"nodes_{nodes}_e2e"] = ack, e2e
    finally:
        remove_postgres(postgres)
    times["small_ack_par"], times["small_e2e_par"] = router_times(
        folder / "sqlite", data.small, parallel=args.senders)
    times["small_direct_par"] = direct_time(folder / "direct", data.small,
                                            parallel=args.senders)
    return times


# -- cpu --------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (/proc/PID/stat, fields 14 and 15)."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def senders_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children so far: the storescu runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_while(parts: dict[str, int], action: Callable[[], None]) -> dict[str, float]:
    """CPU seconds each named process (and the senders, "storescu") spent during
    ``action``."""
    before = {name: process_cpu_seconds(pid) for name, pid in parts.items()}
    senders = senders_cpu_seconds()
    action()
    spent = {name: process_cpu_seconds(pid) - before[name] for name, pid in parts.items()}
    spent["storescu"] = senders_cpu_seconds() - senders
    return spent


def orthanc_pid(target: RunningOrthanc) -> int:
    pid = target.process.pid
    assert pid is not None
    return pid


def case_cpu(folder: Path, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    """The 64×64 batch (``--cpu-batch ct``: the 0.5 MB CT one) over one association, direct
    and through the router (until every instance is in a storage and the probe), with the
    CPU seconds of every process: where the 2 cores go."""
    batch = data.ct if args.cpu_batch == "ct" else data.small
    with contextlib.ExitStack() as stack:
        target = orthanc(stack, folder / "direct", "ORTHANC1")
        counter = Counter()
        stack.callback(counter.close)

        def direct() -> None:
            send(batch.files, target.dicom_port, target.aet)
            wait_for(lambda: counter.count(target) >= batch.count, 30, "direct arrivals")

        started = time.perf_counter()
        direct_cpu = cpu_while({"ORTHANC1": orthanc_pid(target)}, direct)
        direct_s = time.perf_counter() - started
    with contextlib.ExitStack() as stack:
        deployment = start_deployment(stack, folder / "router")
        counter = Counter()
        stack.callback(counter.close)
        parts = {"router main": deployment.pid}
        parts.update({f"router receiver {n}": pid
                      for n, pid in enumerate(deployment.router.receiver_pids(), 1)})
        parts.update({o.aet: orthanc_pid(o) for o in [*deployment.storages, deployment.probe]})

        def routed() -> None:
            send(batch.files, deployment.port, ROUTER_AET)
            wait_for(lambda: deployment.arrived(counter, batch.count), ARRIVAL_TIMEOUT,
                     "routed arrivals")

        started = time.perf_counter()
        router_cpu = cpu_while(parts, routed)
        router_s = time.perf_counter() - started
    per = 1000.0 / batch.count  # CPU ms per instance
    return {"cpu": {
        "batch": "0.5 MB CT" if batch is data.ct else "64×64",
        "instances": batch.count,
        "direct": {"seconds": direct_s,
                   "cpu_ms_per_instance": {k: v * per for k, v in direct_cpu.items()}},
        "router": {"seconds": router_s,
                   "cpu_ms_per_instance": {k: v * per for k, v in router_cpu.items()}},
    }}


def print_cpu(rounds: list[dict[str, Any]]) -> None:
    measured = [r["cpu"] for r in rounds if "cpu" in r]
    if not measured:
        return
    print(f"\nCPU per {measured[0]['batch']} instance, one association (ms; medians of "
          f"rounds)")
    for path in ("direct", "router"):
        names = measured[0][path]["cpu_ms_per_instance"].keys()
        seconds = median_of([m[path]["seconds"] for m in measured])
        shares = {n: median_of([m[path]["cpu_ms_per_instance"][n] for m in measured])
                  for n in names}
        total = sum(v for v in shares.values() if v is not None)
        wall_ms = 1000.0 * (seconds or 0.0) / measured[0]["instances"]
        listed = ", ".join(f"{n} {fmt(v)}" for n, v in shares.items())
        print(f"  {path:<7} {listed}; all {total:.2f} ms of CPU per instance, "
              f"{wall_ms:.2f} ms of wall time ({os.cpu_count()} cores: "
              f"{total / wall_ms / (os.cpu_count() or 1) * 100 if wall_ms else 0:.0f} % busy)")


# -- gigabyte ---------------------------------------------------------------------------------


def delivery_problems(database: Path) -> list[str]:
    """The errors of deliveries that failed or were refused at least once."""
    with contextlib.closing(Ledger(database)) as ledger:
        rows = ledger.diagnostics.deliveries()
    return [f"{d.endpoint} ({d.state}): {d.last_error}" for d in rows
            if d.last_error is not None]


def case_gigabyte(folder: Path, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    assert data.big is not None
    result: dict[str, Any] = {"megabytes": data.big.stat().st_size / MB}
    with contextlib.ExitStack() as stack:
        deployment = start_deployment(stack, folder)
        counter = Counter()
        stack.callback(counter.close)
        result["baseline_rss_mb"] = tree_rss_mb(deployment.pid)
        database = deployment.home / "dde.sqlite3"
        with RssSampler(deployment.pid) as rss:
            started = time.perf_counter()
            try:
                result["ack_s"] = send([data.big], deployment.port, ROUTER_AET,
                                       timeout=GIGABYTE_TIMEOUT)
                wait_for(lambda: (deployment.arrived(counter, 1)
                                  or any("(failed)" in p for p in delivery_problems(database))),
                         ARRIVAL_TIMEOUT, "the big instance in a storage and the probe")
            except RuntimeError as exc:
                result["error"] = str(exc)[-1000:]
            result["e2e_s"] = time.perf_counter() - started
            result["acknowledged"] = "ack_s" in result  # storescu exited 0: Success
            result["arrived"] = deployment.arrived(counter, 1)
        result["problems"] = delivery_problems(database)[:5]
        result["peak_rss_mb"] = rss.peak_sum_mb
        result["peak_hwm_sum_mb"] = rss.hwm_sum_mb
        result["processes"] = len(rss.hwm_kb)
    if not result["arrived"]:
        result.pop("e2e_s")
    return {"gigabyte": result}


# -- runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    ct: Batch
    small: Batch
    big: Path | None


def make_data(folder: Path, args: argparse.Namespace, cases: Sequence[str]) -> Data:
    progress(f"generating {args.instances} CT instances of 512×512")
    ct = Batch(write_series(folder / "ct", args.instances, rows=512, columns=512))
    small = Batch([])
    if {"small", "alone", "cpu", "nodes"} & set(cases):
        progress(f"generating {args.small} instances of 64×64")
        small = Batch(write_series(folder / "small", args.small, rows=64, columns=64))
    big = None
    if "gigabyte" in cases:
        big = folder / "big" / "multiframe.dcm"
        big.parent.mkdir(parents=True)
        frames = write_large_instance(big, args.gigabyte_mb)
        progress(f"wrote one instance of {frames} frames, {big.stat().st_size / MB:.0f} MB")
    return Data(ct, small, big)


Case = Callable[[Path, Data, argparse.Namespace], dict[str, Any]]
CASE_FUNCTIONS: dict[str, Case] = {
    "direct": case_direct, "router": case_router, "peer": case_peer, "small": case_small,
    "latency": case_latency, "gigabyte": case_gigabyte, "backlog": case_backlog,
    "alone": case_alone, "sustained": case_sustained, "cpu": case_cpu, "nodes": case_nodes,
    "stow-in": case_stow,
    "stow-out": case_stow_out,
}


def run_round(folder: Path, data: Data, args: argparse.Namespace,
              cases: Sequence[str], number: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for case in cases:
        progress(f"round {number}/{args.rounds}: {case}")
        measured = CASE_FUNCTIONS[case](folder / case, data, args)
        progress(f"round {number}/{args.rounds}: {case}: {brief(measured)}")
        result.update(measured)
        # Nothing is deleted until the whole run is over: the disk here is mounted with
        # `discard`, and a mass delete slows the writes of the cases that follow it.
    return result


def brief(measured: dict[str, Any]) -> str:
    """One line for the progress log: floats rounded, nested results flattened."""

    def show(key: str, value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(show(f"{key}.{k}", v) for k, v in value.items())
        return f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"

    return ", ".join(show(k, v) for k, v in measured.items())


# -- summary ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    """A timed metric: which batch it sends, which direct time it is compared with, and
    whether it is compared with the Lua peer."""

    batch: str
    direct: str | None
    vs_peer: bool = False


TIMED: dict[str, Timed] = {
    "direct": Timed("ct", None),
    "router_ack": Timed("ct", "direct", True),
    "router_e2e": Timed("ct", "direct", True),
    "peer_e2e": Timed("ct", "direct"),
    "backlog_ack": Timed("ct", "direct", True),
    "backlog_e2e": Timed("ct", "direct", True),
    "small_direct_1": Timed("small", None),
    "small_ack_1": Timed("small", "small_direct_1"),
    "small_e2e_1": Timed("small", "small_direct_1"),
    "small_direct_par": Timed("small", None),
    "small_ack_par": Timed("small", "small_direct_par"),
    "small_e2e_par": Timed("small", "small_direct_par"),
    "alone_ack": Timed("ct", "direct"),
    "alone_small_ack": Timed("small", "small_direct_1"),
    "stow_cstore_ack": Timed("ct", None),
    "stow_cstore_e2e": Timed("ct", None),
    "stow_ack": Timed("ct", "stow_cstore_ack"),
    "stow_e2e": Timed("ct", "stow_cstore_e2e"),
    "stow_out_cstore_e2e": Timed("ct", "direct"),
    "stow_out_e2e": Timed("ct", "stow_out_cstore_e2e"),
    **{f"nodes_{n}_{kind}": Timed("small", "small_direct_par")
       for n in NODE_COUNTS for kind in ("ack", "e2e")},
}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def summarize_times(rounds: list[dict[str, Any]], data: Data) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for key, spec in TIMED.items():
        times = [r[key] for r in rounds if key in r]
        if not times:
            continue
        batch = data.ct if spec.batch == "ct" else data.small
        median = statistics.median(times)
        summary[key] = {"median_s": median, "min_s": min(times), "max_s": max(times),
                        "mb_per_s": batch.megabytes / median,
                        "instances_per_s": batch.count / median}
    peer = summary.get("peer_e2e", {}).get("median_s")
    for key, row in summary.items():
        spec = TIMED[key]
        reference = summary.get(spec.direct or "", {}).get("median_s")
        row["speed_vs_direct"] = ratio(reference, row["median_s"])
        row["speed_vs_peer"] = ratio(peer, row["median_s"]) if spec.vs_peer else None
    return summary


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_latency(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    measured = [r["latency"] for r in rounds if "latency" in r]
    if not measured:
        return None
    summary: dict[str, Any] = {
        path: {stat: median_of([m[path][stat] for m in measured])
               for stat in ("p50_ms", "p99_ms", "max_ms")}
        for path in ("direct", "router")}
    summary["router_histogram_p99_ms"] = median_of(
        [m["router_histogram_p99_ms"] for m in measured])
    return summary


def summarize_gigabyte(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    measured = [r["gigabyte"] for r in rounds if "gigabyte" in r]
    if not measured:
        return None
    return {
        "megabytes": measured[0]["megabytes"],
        "ack_s": median_of([m.get("ack_s") for m in measured]),
        "e2e_s": median_of([m.get("e2e_s") for m in measured]),
        "acknowledged": all(m.get("acknowledged", "ack_s" in m) for m in measured),
        "arrived": all(m["arrived"] for m in measured),
        "rounds": len(measured),
        "unacknowledged_rounds": sum(1 for m in measured
                                     if not m.get("acknowledged", "ack_s" in m)),
        "not_arrived_rounds": sum(1 for m in measured if not m["arrived"]),
        "baseline_rss_mb": median_of([m["baseline_rss_mb"] for m in measured]),
        "peak_rss_mb": max(m["peak_rss_mb"] for m in measured),
        "peak_hwm_sum_mb": max(m["peak_hwm_sum_mb"] for m in measured),
        "problems": sorted({p for m in measured for p in m["problems"]})[:5],
        "errors": [m["error"] for m in measured if "error" in m],
    }


def backlog_cost(times: dict[str, dict[str, Any]], kind: str) -> float | None:
    """How much longer the backlog run took than the plain router run, in %."""
    cost = ratio(times.get(f"backlog_{kind}", {}).get("median_s"),
                 times.get(f"router_{kind}", {}).get("median_s"))
    return None if cost is None else 100 * (cost - 1)


@dataclass(frozen=True)
class Headline:
    label: str
    value: float | None
    unit: str
    target: float
    minimum: float | None = None
    lower_is_better: bool = False
    failed: str | None = None
    """Why the case behind this figure failed: then there is no verdict on the figure."""

    def verdict(self) -> str:
        if self.failed is not None:
            return f"FAILED ({self.failed}): no verdict"
        if self.value is None:
            return "n/a"

        def meets(bound: float) -> bool:
            assert self.value is not None
            return self.value < bound if self.lower_is_better else self.value >= bound

        if meets(self.target):
            return "PASS"
        if self.minimum is not None and meets(self.minimum):
            return "MISS (minimum met)"
        return "MISS"

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "value": self.value, "unit": self.unit,
                "target": self.target, "minimum": self.minimum, "verdict": self.verdict(),
                "failed": self.failed}


def gigabyte_failure(gigabyte: dict[str, Any]) -> str | None:
    """Why the big-instance case failed (not acknowledged, or not in a storage and the probe
    in some round); None when the instance arrived in every round. A peak RSS is judged
    only for an instance that went all the way through."""
    if not gigabyte:
        return None
    rounds = gigabyte.get("rounds", 1)
    reasons = []
    if not gigabyte.get("acknowledged", gigabyte.get("ack_s") is not None):
        reasons.append(f"not acknowledged in {gigabyte.get('unacknowledged_rounds', rounds)} "
                       f"of {rounds} round(s)")
    if not gigabyte.get("arrived"):
        reasons.append(f"not in a storage and the probe in "
                       f"{gigabyte.get('not_arrived_rounds', rounds)} of {rounds} round(s)")
    return f"the instance was {' and '.join(reasons)}" if reasons else None


def headlines(summary: dict[str, Any]) -> list[Headline]:
    times: dict[str, dict[str, Any]] = summary["times"]
    latency = summary["latency"] or {}
    gigabyte = summary["gigabyte"] or {}

    def speed(key: str, field_name: str = "speed_vs_direct") -> float | None:
        return times.get(key, {}).get(field_name)

    costs = [c for c in (backlog_cost(times, "ack"), backlog_cost(times, "e2e")) if c is not None]
    return [
        Headline("router ack speed vs direct", speed("router_ack"), "×", 1.0, 0.8),
        Headline("router e2e speed vs direct", speed("router_e2e"), "×", 0.5, 0.4),
        Headline("router e2e speed vs Lua peer", speed("router_e2e", "speed_vs_peer"), "×",
                 3.0, 1.5),
        Headline("small instances acknowledged/s, one association",
                 times.get("small_ack_1", {}).get("instances_per_s"), "/s", 300),
        Headline(f"p99 ack latency router (direct: {fmt(latency.get('direct', {}).get('p99_ms'))}"
                 " ms)", latency.get("router", {}).get("p99_ms"), "ms", 20,
                 lower_is_better=True),
        Headline(f"peak router RSS, {fmt(gigabyte.get('megabytes'), 0)} MB instance",
                 gigabyte.get("peak_rss_mb"), "MB", 200, lower_is_better=True,
                 failed=gigabyte_failure(gigabyte)),
        Headline("backlog cost (worse of ack, e2e)", max(costs) if costs else None, "%", 10,
                 lower_is_better=True),
    ]


# -- output -----------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(summary: dict[str, Any], data: Data, args: argparse.Namespace) -> None:
    print(f"\n{data.ct.count} CT instances ({data.ct.megabytes:.1f} MB); {data.small.count} "
          f"small ({data.small.megabytes:.1f} MB); {args.rounds} rounds; "
          f"{args.senders} parallel senders for *_par")
    print(f"{'path':<17} {'median s':>9} {'min–max s':>15} {'MB/s':>7} {'inst/s':>8} "
          f"{'× direct':>9} {'× peer':>7}")
    for key, row in summary["times"].items():
        span = f"{row['min_s']:.2f}–{row['max_s']:.2f}"
        print(f"{key:<17} {row['median_s']:>9.2f} {span:>15} {row['mb_per_s']:>7.1f} "
              f"{row['instances_per_s']:>8.1f} {fmt(row['speed_vs_direct']):>9} "
              f"{fmt(row['speed_vs_peer']):>7}")
    times = summary["times"]
    for kind in ("ack", "e2e"):
        stow_row, cstore_row = times.get(f"stow_{kind}"), times.get(f"stow_cstore_{kind}")
        if stow_row and cstore_row:
            print(f"\nSTOW-RS {kind} ({args.stow_per_request} instances per request): "
                  f"{stow_row['instances_per_s']:.1f} instances/s against C-STORE's "
                  f"{cstore_row['instances_per_s']:.1f} (× {fmt(stow_row['speed_vs_direct'])})")
    latency = summary["latency"]
    if latency:
        print("\nC-STORE ack latency, 0.5 MB instances (storescu's log; medians of rounds)")
        for path in ("direct", "router"):
            row = latency[path]
            print(f"  {path:<7} p50 {fmt(row['p50_ms'])} ms  p99 {fmt(row['p99_ms'])} ms  "
                  f"max {fmt(row['max_ms'])} ms")
        print(f"  router's dde_ack_latency_seconds: p99 ≤ "
              f"{fmt(latency['router_histogram_p99_ms'], 1)} ms (bucket bound)")
    gigabyte = summary["gigabyte"]
    if gigabyte:
        failure = gigabyte_failure(gigabyte)
        if failure is not None:
            print(f"\nOne instance of {gigabyte['megabytes']:.0f} MB to the router: the case "
                  f"FAILED ({failure}; ack {fmt(gigabyte['ack_s'])} s); no memory verdict "
                  f"without the instance through")
        else:
            print(f"\nOne instance of {gigabyte['megabytes']:.0f} MB to the router: ack "
                  f"{fmt(gigabyte['ack_s'])} s, e2e {fmt(gigabyte['e2e_s'])} s, arrived "
                  f"{gigabyte['arrived']}; router RSS baseline "
                  f"{fmt(gigabyte['baseline_rss_mb'], 0)} MB, peak "
                  f"{gigabyte['peak_rss_mb']:.0f} MB (sampled sum), "
                  f"{gigabyte['peak_hwm_sum_mb']:.0f} MB (sum of VmHWM)")
        for problem in gigabyte["problems"] + gigabyte["errors"]:
            print(f"  problem: {problem}")
    print("\nHeadline")
    for line in summary["headline"]:
        value = f"{fmt(line['value'])} {line['unit']}"
        print(f"  {line['label']:<52} {value:>12}  target {line['target']:g}  {line['verdict']}")


def first_line(argv: Sequence[str], contains: str = "") -> str:
    try:
        output = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = [line.strip() for line in output.splitlines() if contains in line and line.strip()]
    return lines[0] if lines else "unknown"


def proc_field(path: str, key: str) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return "unknown"


def filesystem_of(path: Path) -> str:
    resolved, best = str(path.resolve()), ("", "unknown", "unknown")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, kind = line.split()[:3]
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) \
                and len(mount) >= len(best[0]):
            best = (mount, kind, device)
    return f"{best[1]} ({best[2]} on {best[0]})"


def machine(temp: Path) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": proc_field("/proc/cpuinfo", "model name"),
        "ram": proc_field("/proc/meminfo", "MemTotal"),
        "kernel": f"{platform.system()} {platform.release()}",
        "temp_filesystem": filesystem_of(temp),
        "python": platform.python_version(),
        "orthanc": first_line([ORTHANC, "--version"], "Orthanc"),
        "dcmtk": first_line([STORESCU, "--version"], "dcmtk"),
        "load_average_at_start": os.getloadavg(),
    }


# -- main -------------------------------------------------------------------------------------


def parse_cases(text: str) -> list[str]:
    wanted = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CASES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown case(s) {', '.join(unknown)}; "
                                         f"choose from {', '.join(CASES)}")
    if "backlog" in wanted and "router" not in wanted:
        wanted.append("router")  # the backlog cost is measured against it
    return [c for c in CASES if c in wanted]


def parse_associations(text: str) -> list[int | None]:
    values: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        values.append(None if part == "default" else int(part))
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=200, help="512×512 CT instances")
    parser.add_argument("--small", type=int, default=2000, help="64×64 instances")
    parser.add_argument("--senders", type=int, default=4, help="parallel storescu (small)")
    parser.add_argument("--cpu-batch", choices=("small", "ct"), default="small",
                        help="the batch the cpu case sends (default: small, 64×64)")
    parser.add_argument("--gigabyte-mb", type=int, default=1024,
                        help="size of the big multi-frame instance, MiB")
    parser.add_argument("--backlog", type=int, default=100_000, help="pending deliveries")
    parser.add_argument("--sustained-seconds", type=float, default=75.0,
                        help="continuous sending per run (sustained)")
    parser.add_argument("--sustained-files", type=int, default=600,
                        help="128×128 instances the two loops send again and again")
    parser.add_argument("--sustained-associations", type=parse_associations,
                        default=[1, None], help="delivery.associations of each sustained run, "
                        "comma-separated; 'default': the router's default (1,default)")
    parser.add_argument("--sample-seconds", type=float, default=5.0,
                        help="how often the probe's backlog is sampled (sustained)")
    parser.add_argument("--stow-per-request", type=int, default=20,
                        help="instances per STOW-RS request (stow)")
    parser.add_argument("--only", type=parse_cases, default=list(CASES),
                        help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    return parser.parse_args(argv)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dde-bench-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    cases: list[str] = args.only
    with workspace() as work:
        description = machine(work)
        data = make_data(work / "data", args, cases)
        rounds = [run_round(work / f"round{n}", data, args, cases, n)
                  for n in range(1, args.rounds + 1)]
        summary: dict[str, Any] = {"times": summarize_times(rounds, data),
                                   "latency": summarize_latency(rounds),
                                   "gigabyte": summarize_gigabyte(rounds)}
        summary["backlog_cost_percent"] = {kind: backlog_cost(summary["times"], kind)
                                           for kind in ("ack", "e2e")}
        summary["headline"] = [h.as_json() for h in headlines(summary)]
        print_report(summary, data, args)
        print_cpu(rounds)
        document = {
            "machine": description,
            "parameters": {"rounds": args.rounds, "instances": args.instances,
                           "ct_megabytes": data.ct.megabytes, "small": args.small,
                           "small_megabytes": data.small.megabytes, "senders": args.senders,
                           "gigabyte_mb": args.gigabyte_mb, "backlog": args.backlog,
                           "stow_per_request": args.stow_per_request, "cases": cases},
            "rounds": rounds,
            "summary": summary,
        }
        if data.big is not None:
            data.big.unlink()
    text = json.dumps(document, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
