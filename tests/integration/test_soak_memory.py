"""Issue item 19: the resident memory of every router process levels off under continuous
sending.

``dde serve`` (with its receiver process) against real Orthancs; two DCMTK storescu loops
send 128×128 CT instances, a few per association (the leak was per association: every
association thread opened its own ledger connection, and the ledger kept all of them, with
their page caches, for ever: about 200 kB an association, 2.6 kB an instance with 100
instances an association). Before the fix the receiver process grew 67 → 117 MB during the
45 s measured here (+13.9 MB in the last third); after it, +0.2 MB.

After a warm-up the test samples ``VmRSS`` of the main process and of each receiver process
once a second; in the last third of the run no process may grow more than
:data:`PLATEAU_BOUND_MB` above the highest value it had before, while instances keep being
acknowledged. Rerun with the figures:
``.venv/bin/pytest tests/integration/test_soak_memory.py -s``
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.datagen import write_studies
from tests.support.faults import StorescuRun, start_storescu
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import free_port, wait_until
from tests.support.router import (
    ROUTER_AET,
    RouterProcess,
    router_settings,
    stop_process_quietly,
    write_router_home,
)

from dde.store.database import Database

WARM_UP_SECONDS = 15.0
MEASURE_SECONDS = 45.0
SAMPLE_SECONDS = 1.0
FILES_PER_ASSOCIATION = 5
PLATEAU_BOUND_MB = 4.0
MIN_INSTANCES_IN_LAST_THIRD = 100


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Senders:
    """Two storescu loops, each sending its files in associations of a few instances."""

    def __init__(self, files: list[list[Path]], port: int, folder: Path) -> None:
        self._files = files
        self._port = port
        self._folder = folder
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.acknowledged = 0
        self.failed_runs = 0
        self._threads = [threading.Thread(target=self._loop, args=(index,), daemon=True)
                         for index in range(len(files))]
        self._running: dict[int, StorescuRun] = {}

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _loop(self, index: int) -> None:
        files = self._files[index]
        batch = 0
        while not self._stop.is_set():
            start = (batch * FILES_PER_ASSOCIATION) % len(files)
            chunk = files[start:start + FILES_PER_ASSOCIATION]
            run = start_storescu(chunk, self._port, ROUTER_AET,
                                 self._folder / f"storescu-{index}-{batch % 2}.log")
            self._running[index] = run
            try:
                run.wait(60)
            except Exception:
                run.stop()
            acknowledged = len(run.acknowledged())
            with self._lock:
                self.acknowledged += acknowledged
                if not self._stop.is_set():  # a run stopped at the end is short
                    self.failed_runs += acknowledged < len(chunk)
            batch += 1

    def stop(self) -> None:
        self._stop.set()
        for run in list(self._running.values()):
            run.stop()
        for thread in self._threads:
            thread.join(30)


@pytest.fixture
def soak_router(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[RouterProcess]:
    storage1 = orthanc_factory("ORTHANC1")
    storage2 = orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    home = tmp_path / "router-home"
    port = free_port()
    write_router_home(home, router_settings([storage1, storage2], probe, port=port,
                                            receiver={"processes": 1}))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start(timeout=60)
    try:
        yield router
    finally:
        try:
            router.terminate()
        except Exception:
            stop_process_quietly(router)


@pytest.mark.integration
@pytest.mark.slow
def test_resident_memory_of_every_router_process_levels_off(soak_router: RouterProcess,
                                                            tmp_path: Path) -> None:
    router = soak_router
    files = []
    for index in range(2):
        studies = write_studies(tmp_path / f"files{index}", 4, 20, rows=128, columns=128)
        files.append([f for paths in studies.values() for f in paths])
    wait_until(router.receiver_pids, 20, "a receiver process")
    senders = Senders(files, router.port, tmp_path)
    senders.start()
    try:
        time.sleep(WARM_UP_SECONDS)
        assert router.process is not None
        pids = [router.process.pid, *router.receiver_pids()]
        samples: dict[int, list[float]] = {pid: [] for pid in pids}
        counts: list[int] = []
        started = time.monotonic()
        while time.monotonic() - started < MEASURE_SECONDS:
            for pid in pids:
                samples[pid].append(rss_mb(pid))
            counts.append(senders.acknowledged)
            time.sleep(SAMPLE_SECONDS)
    finally:
        senders.stop()

    third = len(counts) // 3
    in_last_third = counts[-1] - counts[-third - 1]
    rate = (counts[-1] - counts[0]) / MEASURE_SECONDS
    report = []
    for pid, values in samples.items():
        before, last = max(values[:-third]), max(values[-third:])
        report.append((pid, values[0], before, last, last - before))
        print(f"pid {pid}: {values[0]:.1f} MB after the warm-up, highest {before:.1f} MB "
              f"before the last third, {last:.1f} MB in it ({last - before:+.1f} MB)")
    print(f"{senders.acknowledged} instances acknowledged, {rate:.0f}/s while measuring, "
          f"{in_last_third} in the last third; {senders.failed_runs} storescu run(s) short")
    assert in_last_third >= MIN_INSTANCES_IN_LAST_THIRD, "instances stopped flowing"
    grown = [r for r in report if r[4] > PLATEAU_BOUND_MB]
    assert not grown, f"resident memory still growing (pid, start, before, last, growth): {grown}"
    assert router.receiver_pids() == pids[1:], "a receiver process was restarted"


def test_a_thread_that_ended_leaves_no_ledger_connection_behind(tmp_path: Path) -> None:
    """The cause, without the soak: one connection per thread, kept after the thread ended
    (20 association threads used to leave 20 connections open)."""
    database = Database(tmp_path / "ledger.sqlite3")
    try:
        for _ in range(20):
            thread = threading.Thread(target=lambda: database.connection().execute("SELECT 1"))
            thread.start()
            thread.join()
        assert database.open_connections() <= 2  # this thread's, and the last one's
        assert database.connection().execute("SELECT 1").fetchone() == (1,)
    finally:
        database.close()
