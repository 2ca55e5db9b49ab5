"""``kill -9`` of whatever answers C-STORE, again and again, while several senders send.

DESIGN invariants 1 and 4: success is answered only for an instance that is durable (spool
file fsync'd, ledger committed), and nothing acknowledged is lost. Three DCMTK storescu
senders run in parallel, each one association after another over its own files (a file
acknowledged is never sent again; one that was not is sent again in a later association).
Meanwhile the test kills, with SIGKILL at seeded random moments:

* the receiver process (``receiver.processes: 1``, the default) at least 10 times; the
  main process's pool starts a new one each time;
* with ``receiver.processes: 0`` (receiving inside the main process) the whole router, at
  least 5 times, restarting it each time.

Right after each kill every file storescu logged as acknowledged is in the ledger; at the
end, once the router has drained, every acknowledged instance is in the storage Orthanc and
the probe, and no delivery is left pending or failed. Rerun with the figures:
``.venv/bin/pytest tests/integration/test_receiver_kill.py -s``
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from tests.support.datagen import write_studies
from tests.support.faults import (
    StorescuRun,
    ledger_sop_instance_uids,
    sop_instance_uid,
    start_storescu,
    state_counts,
)
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, wait_until
from tests.support.router import (
    ROUTER_AET,
    RouterProcess,
    router_settings,
    stop_process_quietly,
    write_router_home,
)

from dde.receiving.pool import RESTART_CAP, RESTART_FIRST, YOUNG_SECONDS
from dde.store.ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261128
SENDERS = 3
FILES_PER_SENDER = 360
FILES_PER_ASSOCIATION = 3
PAUSE_BETWEEN_ASSOCIATIONS = (0.1, 0.8)
KILL_DELAY = (0.0, 1.5)
"""Seconds, drawn at random, between a receiver being seen receiving and its kill."""
RECEIVER_KILLS = 10
ROUTER_KILLS = 6
LONGEST_RESTART_WAIT = 4.0
"""The pool waits RESTART_FIRST before starting a dead receiver process again, doubling up
to RESTART_CAP while it keeps dying younger than YOUNG_SECONDS. Before a kill that would make
the pool wait longer than this, the test lets the receiver grow older than YOUNG_SECONDS
(which resets the wait): 10 kills then take about a minute instead of several."""


def _older_than(since: float, seconds: float) -> bool:
    return time.monotonic() - since > seconds


def _dead(pid: int) -> bool:
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped


@dataclass
class Sender:
    """One storescu after another (one association each) over ``files`` until stopped or
    every file is acknowledged."""

    index: int
    files: list[Path]
    port: int
    folder: Path
    rng: random.Random
    stop: threading.Event
    runs: list[StorescuRun] = field(default_factory=list)
    acknowledged: set[Path] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                with self.lock:
                    pending = [f for f in self.files if f not in self.acknowledged]
                if not pending:
                    return
                log = self.folder / f"storescu-{self.index}-{len(self.runs):04d}.log"
                run = start_storescu(pending[:FILES_PER_ASSOCIATION], self.port, ROUTER_AET,
                                     log)
                with self.lock:
                    self.runs.append(run)
                try:
                    run.wait(60)  # a killed receiver ends the association at once
                finally:
                    run.stop()
                with self.lock:
                    self.acknowledged.update(run.acknowledged())
                self.stop.wait(self.rng.uniform(*PAUSE_BETWEEN_ASSOCIATIONS))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def storing(self) -> bool:
        """Whether its storescu is sending a C-STORE now (sent, no response yet)."""
        with self.lock:
            run = self.runs[-1] if self.runs else None
        return (run is not None and run.process.poll() is None
                and len(_sending(run)) > _responses(run))

    def logged_acknowledged(self) -> set[Path]:
        """Every file any of this sender's storescu logged a Success response for, also
        those of the storescu running now."""
        with self.lock:
            runs = list(self.runs)
        return {path for run in runs for path in run.acknowledged()}


@dataclass
class KillRun:
    router: RouterProcess
    storage: RunningOrthanc
    probe: RunningOrthanc
    senders: list[Sender]
    stop: threading.Event
    ledger: Ledger | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    uids: dict[Path, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)

    def start_senders(self) -> None:
        for sender in self.senders:
            thread = threading.Thread(target=sender.run, name=f"sender-{sender.index}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop_senders(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)
        for sender in self.senders:
            if sender.error is not None:
                raise AssertionError(f"sender {sender.index} failed") from sender.error
        assert not any(t.is_alive() for t in self.threads), "a sender did not stop"

    def open_ledger(self) -> Ledger:
        if self.ledger is None:
            self.ledger = self.router.ledger()
        return self.ledger

    def close_ledger(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    def committed(self) -> int:
        """Deliveries committed so far (two per instance: storage and probe)."""
        return sum(state_counts(self.open_ledger()).values())

    def acknowledged(self) -> set[str]:
        return {self.uid(path) for sender in self.senders
                for path in sender.logged_acknowledged()}

    def uid(self, path: Path) -> str:
        if path not in self.uids:
            self.uids[path] = sop_instance_uid(path)
        return self.uids[path]

    def wait_receiving(self, label: str, timeout: float = 30.0) -> None:
        """Until the router (after a start or restart) has committed a new instance."""
        before = self.committed()
        wait_until(lambda: self.committed() > before, timeout,
                   f"the router receiving again {label}")

    def kill_moment(self, rng: random.Random) -> str:
        """Wait for the random moment of the next kill; say which kind it was. Half the
        kills (at random) land at any moment within KILL_DELAY; the other half right after
        a sender is seen with a C-STORE in flight (a few ms window, easily missed by chance
        with senders that pause between associations)."""
        if rng.random() < 0.5:
            time.sleep(rng.uniform(*KILL_DELAY))
            return "any moment"
        time.sleep(rng.uniform(*KILL_DELAY) / 2)
        deadline = time.monotonic() + 10
        while not any(sender.storing() for sender in self.senders):
            if time.monotonic() > deadline:
                return "any moment (no C-STORE seen in flight within 10 s)"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.005))
        return "a C-STORE in flight"

    def check_acknowledged_are_committed(self, label: str) -> int:
        """Whatever storescu logged as acknowledged up to now is in the ledger (read with
        nothing receiving: the receiver was just killed)."""
        acknowledged = self.acknowledged()
        in_ledger = ledger_sop_instance_uids(self.open_ledger())
        unrecorded = acknowledged - in_ledger
        assert not unrecorded, (f"after {label}: {len(unrecorded)} instances acknowledged "
                                f"with Success are not in the ledger: {sorted(unrecorded)[:3]}")
        self.checks.append(f"{label}: {len(acknowledged)} acknowledged, "
                           f"{len(in_ledger)} in the ledger")
        return len(acknowledged)

    def check_end(self, title: str, started: float) -> None:
        self.stop_senders()
        self.router.wait_idle(120)
        ledger = self.open_ledger()
        counts = state_counts(ledger)
        in_ledger = ledger_sop_instance_uids(ledger)
        acknowledged = self.acknowledged()
        runs = [r for s in self.senders for r in s.runs]
        attempted = len({path for r in runs for path in _sending(r)})
        failed = sum(1 for r in runs if r.process.returncode != 0)
        cut = sum(1 for r in runs if len(_sending(r)) > _responses(r))
        in_storage = self.storage.sop_instance_uids()
        in_probe = self.probe.sop_instance_uids()
        lost = acknowledged - (in_storage & in_probe)
        print(f"\n{title}: seed {SEED}; {len(self.senders)} senders, {len(runs)} storescu "
              f"runs ({failed} failed: cut by a kill or refused while down; {cut} cut with "
              f"a C-STORE in flight), {attempted} files sent at least once, {len(acknowledged)} "
              f"acknowledged, {len(in_ledger)} instances in the ledger "
              f"({len(in_ledger - acknowledged)} committed but never acknowledged), "
              f"deliveries {counts}; {len(acknowledged - lost)} acknowledged instances in "
              f"storage and probe, {len(lost)} lost; {time.monotonic() - started:.0f} s")
        for line in self.checks:
            print(f"  {line}")
        assert not acknowledged - in_ledger, "acknowledged instances missing from the ledger"
        assert set(counts) == {"delivered"}, f"deliveries left undelivered: {counts}"
        assert not lost, (f"{len(lost)} acknowledged instances are not in both the storage "
                          f"and the probe: {sorted(lost)[:3]}")


def check_no_unrecorded_spool_files(run: KillRun, restart: bool) -> None:
    """After the kills, once the router has been (re)started and stopped cleanly, every
    spool file is one the ledger knows: what killed processes left (prepared files never
    used, datasets never committed) was swept at start, and a clean stop takes its own
    prepared files away."""
    router = run.router
    router.terminate()
    if restart:  # the main process survived the kills: its start has not swept yet
        router.start()
        router.terminate()
    run.close_ledger()
    recorded = run.open_ledger().spool_index.spool_paths_in_use()
    spool = router.home / "spool"
    files = {f"{p.parent.name}/{p.name}" for p in spool.glob("*/*.dcm")
             if p.parent.name != "incoming"}
    assert not files - recorded, (f"{len(files - recorded)} spool files without a ledger "
                                  f"row, e.g. {sorted(files - recorded)[:3]}")


def _responses(run: StorescuRun) -> int:
    """How many C-STORE responses storescu received in this run."""
    return run.log().count("I: Received Store Response")


def _sending(run: StorescuRun) -> list[Path]:
    """The files storescu started sending in this run."""
    prefix = "I: Sending file: "
    return [Path(line[len(prefix):]) for line in run.log().splitlines()
            if line.startswith(prefix)]


@pytest.fixture
def kill_run_factory(orthanc_factory: OrthancFactory,
                     tmp_path: Path) -> Iterator[Callable[[int], KillRun]]:
    made: list[KillRun] = []

    def make(processes: int) -> KillRun:
        storage = orthanc_factory("ORTHANC1")
        probe = orthanc_factory("ORTHANC-PROBE")
        home = tmp_path / "router-home"
        port = free_port()
        write_router_home(home, router_settings(
            [storage], probe, port=port, web={"enabled": False},
            receiver={"processes": processes}))
        router = RouterProcess(home, port, tmp_path / "router.log")
        stop = threading.Event()
        senders = []
        for index in range(SENDERS):
            studies = write_studies(tmp_path / f"files{index}", FILES_PER_SENDER // 40, 40,
                                    rows=128, columns=128)
            files = [f for paths in studies.values() for f in paths]
            folder = tmp_path / f"sender{index}"
            folder.mkdir()
            senders.append(Sender(index, files, port, folder,
                                  random.Random(SEED + 1 + index), stop))
        run = KillRun(router, storage, probe, senders, stop)
        made.append(run)
        router.start()
        return run

    yield make
    for run in made:
        run.stop.set()
        for thread in run.threads:
            thread.join(30)
        run.close_ledger()
        stop_process_quietly(run.router)


def test_kill_9_of_the_receiver_process_at_random_moments_loses_nothing(
        kill_run_factory: Callable[[int], KillRun]) -> None:
    started = time.monotonic()
    run = kill_run_factory(1)
    router = run.router
    assert router.process is not None
    main_pid = router.process.pid
    rng = random.Random(SEED)
    run.start_senders()
    killed: list[int] = []
    next_wait = RESTART_FIRST  # what the pool will wait after the next death
    for kill in range(1, RECEIVER_KILLS + 1):
        (receiver,) = wait_until(
            lambda: [p for p in router.receiver_pids() if p not in killed and _alive(p)],
            next_wait + 30, f"a receiver process before kill {kill}")
        seen = time.monotonic()
        run.wait_receiving(f"before kill {kill}")
        if next_wait > LONGEST_RESTART_WAIT:
            # Older than YOUNG_SECONDS: the pool's wait starts again from RESTART_FIRST.
            wait_until(partial(_older_than, seen, YOUNG_SECONDS + 1), YOUNG_SECONDS + 5,
                       "the receiver process growing old")
            next_wait = RESTART_FIRST
        moment = run.kill_moment(rng)
        os.kill(receiver, signal.SIGKILL)
        killed.append(receiver)
        wait_until(partial(_dead, receiver), 10, f"receiver {receiver} dead")
        assert router.process.poll() is None, "the main process died with its receiver"
        run.check_acknowledged_are_committed(
            f"kill {kill} (receiver {receiver}, after {time.monotonic() - seen:.1f} s, "
            f"{moment})")
        next_wait = min(RESTART_CAP, next_wait * 2)

    (last,) = wait_until(
        lambda: [p for p in router.receiver_pids() if p not in killed and _alive(p)],
        next_wait + 30, "a receiver process after the last kill")
    run.wait_receiving("after the last kill")
    run.check_end(f"{RECEIVER_KILLS} × kill -9 of the receiver process", started)
    assert router.process.poll() is None and router.process.pid == main_pid
    assert len(set(killed)) == RECEIVER_KILLS and last not in killed
    assert router.history == [main_pid], "the main process was restarted"
    check_no_unrecorded_spool_files(run, restart=True)


def test_kill_9_of_a_router_receiving_in_its_main_process_at_random_moments_loses_nothing(
        kill_run_factory: Callable[[int], KillRun]) -> None:
    started = time.monotonic()
    run = kill_run_factory(0)
    router = run.router
    assert router.receiver_pids() == [], "receiver.processes: 0 started receiver processes"
    rng = random.Random(SEED)
    run.start_senders()
    for kill in range(1, ROUTER_KILLS + 1):
        run.wait_receiving(f"before kill {kill}")
        up = time.monotonic()
        moment = run.kill_moment(rng)
        router.kill()
        run.check_acknowledged_are_committed(
            f"kill {kill} (router {router.history[-1]}, after {time.monotonic() - up:.1f} s, "
            f"{moment})")
        run.close_ledger()
        router.start()
    run.wait_receiving("after the last restart")
    run.check_end(f"{ROUTER_KILLS} × kill -9 of the router (receiver.processes: 0)", started)
    assert len(router.history) == ROUTER_KILLS + 1
    check_no_unrecorded_spool_files(run, restart=False)
