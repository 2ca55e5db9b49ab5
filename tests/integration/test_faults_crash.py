"""The router process dies (``kill -9``) or is stopped (SIGTERM) at the worst moments.

DESIGN invariants 1 and 4: success is answered only for an instance that is on disk and in
the ledger, and a restart resumes every pending delivery, so nothing acknowledged is lost.
The router runs as a real child process (``python -m dde serve``) against real Orthancs;
DCMTK's storescu ``-v`` log says which files got a success response.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.datagen import write_studies
from tests.support.faults import (
    HangingStorageSCP,
    deliveries,
    ledger_sop_instance_uids,
    sop_instance_uid,
    sop_instance_uids,
    start_storescu,
    state_counts,
)
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, storescu, wait_until
from tests.support.router import (
    ROUTER_AET,
    RouterProcess,
    endpoint_for,
    router_settings,
    stop_process_quietly,
    write_router_home,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class CrashStack:
    storage1: RunningOrthanc
    storage2: RunningOrthanc
    probe: RunningOrthanc
    router: RouterProcess

    @property
    def storages(self) -> list[RunningOrthanc]:
        return [self.storage1, self.storage2]

    def ledger_uids(self) -> set[str]:
        ledger = self.router.ledger()
        try:
            return ledger_sop_instance_uids(ledger)
        finally:
            ledger.close()

    def ledger_instance_count(self) -> int:
        ledger = self.router.ledger()
        try:
            return ledger.diagnostics.count("instances")
        finally:
            ledger.close()

    def pending(self, endpoint: str) -> list[dict[str, object]]:
        ledger = self.router.ledger()
        try:
            return deliveries(ledger, endpoint, "pending")
        finally:
            ledger.close()

    def state_counts(self) -> dict[str, int]:
        ledger = self.router.ledger()
        try:
            return state_counts(ledger)
        finally:
            ledger.close()


@pytest.fixture
def crash_stack(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[CrashStack]:
    storage1 = orthanc_factory("ORTHANC1")
    storage2 = orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    home = tmp_path / "router-home"
    port = free_port()
    write_router_home(home, router_settings([storage1, storage2], probe, port=port))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    try:
        yield CrashStack(storage1, storage2, probe, router)
    finally:
        stop_process_quietly(router)


def _assert_delivered_once(uids: set[str], stack: CrashStack) -> None:
    """Each instance is in exactly one storage PACS and in the probe."""
    held = {s.name: s.sop_instance_uids() for s in stack.storages}
    in_probe = stack.probe.sop_instance_uids()
    for uid in uids:
        holders = [name for name, stored in held.items() if uid in stored]
        assert len(holders) == 1, f"{uid} is in {holders or 'no storage'}"
        assert uid in in_probe, f"{uid} is not in the probe"


def test_kill_9_while_receiving_loses_no_acknowledged_instance(
    crash_stack: CrashStack, tmp_path: Path
) -> None:
    stack = crash_stack
    # Three senders at once (three associations), 300 instances in all; the whole router
    # (main and receiver process) is killed while they send. (Killing only the main process
    # lets the receiver finish the associations in hand: test_receiver_kill.py kills receivers.)
    batches = [
        [f for paths in write_studies(tmp_path / f"files{n}", 2, 50, rows=128,
                                      columns=128).values() for f in paths]
        for n in range(3)
    ]
    total = sum(len(batch) for batch in batches)
    runs = [start_storescu(batch, stack.router.port, ROUTER_AET,
                           tmp_path / f"storescu{n}.log") for n, batch in enumerate(batches)]
    try:
        # Kill once a fair share is in, while storescu is still sending.
        wait_until(lambda: stack.ledger_instance_count() >= total // 8, 20,
                   "the router received an eighth of the instances")
        stack.router.kill_all()  # the receiver process too, mid-send
        killed_at = time.monotonic()
        codes = [run.wait(30) for run in runs]
        senders_gave_up = time.monotonic() - killed_at
    finally:
        for run in runs:
            run.stop()
    acknowledged = {sop_instance_uid(f) for run in runs for f in run.acknowledged()}
    attempted = sum(run.log().count("I: Sending file:") for run in runs)
    assert 0 < len(acknowledged) < total, (
        f"the kill did not land mid-send ({len(acknowledged)} of {total} acknowledged)")

    # Right after the crash: every acknowledged instance is in the ledger.
    in_ledger = stack.ledger_uids()
    unrecorded = acknowledged - in_ledger
    assert not unrecorded, f"{len(unrecorded)} acknowledged instances are not in the ledger"

    stack.router.start()
    stack.router.wait_idle(60)
    assert set(stack.state_counts()) == {"delivered"}
    held = [s.sop_instance_uids() for s in stack.storages]
    in_probe = stack.probe.sop_instance_uids()
    delivered = {uid for uid in acknowledged
                 if uid in in_probe and sum(uid in h for h in held) == 1}
    lost = acknowledged - delivered
    print(f"\nkill -9 while receiving: {total} files in 3 associations, {attempted} sent "
          f"before the kill, {len(acknowledged)} acknowledged, {len(in_ledger)} in the ledger "
          f"({len(in_ledger - acknowledged)} committed but unacknowledged), "
          f"{len(delivered)} acknowledged and delivered once + probe, {len(lost)} lost; "
          f"storescu exit codes {codes}, {senders_gave_up:.2f} s after the kill")
    assert not lost, f"{len(lost)} acknowledged, not in exactly one storage + the probe"
    _assert_delivered_once(in_ledger, stack)  # also those committed but never acknowledged
    assert len(stack.router.history) == 2


def test_kill_9_while_delivering_resumes_every_pending_delivery(
    crash_stack: CrashStack, tmp_path: Path
) -> None:
    stack = crash_stack
    stack.storage1.stop()  # its deliveries stay pending; the first new study goes to it
    studies = write_studies(tmp_path / "files", 4, 10)
    files = [f for paths in studies.values() for f in paths]
    uids = set(sop_instance_uids(files))
    storescu(files, stack.router.port, ROUTER_AET)  # every file acknowledged
    stack.router.kill()  # deliveries to the probe and storage 2 may still be in flight
    in_probe_at_kill = len(stack.probe.sop_instance_uids())

    assert stack.ledger_uids() == uids
    waiting = stack.pending(stack.storage1.name)
    assert waiting, "no delivery was waiting for the stopped storage"
    counts = stack.state_counts()
    print(f"\nkill -9 while delivering: {len(uids)} acknowledged; at the kill {counts}, the "
          f"probe held {in_probe_at_kill}, {len(waiting)} waited for {stack.storage1.name}")

    stack.router.start()
    stack.storage1.start_again()
    stack.router.wait_idle(60)
    assert stack.state_counts() == {"delivered": 2 * len(uids)}
    _assert_delivered_once(uids, stack)
    assert {str(d["sop_instance_uid"]) for d in waiting} <= stack.storage1.sop_instance_uids()


def test_sigterm_with_pending_deliveries_exits_cleanly_and_a_restart_completes_them(
    crash_stack: CrashStack, tmp_path: Path
) -> None:
    stack = crash_stack
    stack.storage1.stop()
    studies = write_studies(tmp_path / "files", 3, 6)
    files = [f for paths in studies.values() for f in paths]
    uids = set(sop_instance_uids(files))
    storescu(files, stack.router.port, ROUTER_AET)

    def waiting_with_reason() -> bool:
        pending = stack.pending(stack.storage1.name)
        return bool(pending) and all(d["last_error"] for d in pending)

    wait_until(waiting_with_reason, 15, f"deliveries to {stack.storage1.name} waiting")
    waiting = len(stack.pending(stack.storage1.name))

    started = time.monotonic()
    code = stack.router.terminate(timeout=15)
    took = time.monotonic() - started
    print(f"\nSIGTERM with {waiting} deliveries pending: exit code {code} in {took:.2f} s")
    assert code == 0
    assert took < 5
    assert "stopped" in stack.router.log_path.read_text()
    assert len(stack.pending(stack.storage1.name)) == waiting

    stack.storage1.start_again()
    stack.router.start()
    stack.router.wait_idle(30)
    assert stack.state_counts() == {"delivered": 2 * len(uids)}
    _assert_delivered_once(uids, stack)


def test_sigterm_while_a_destination_hangs_on_c_store_exits_within_seconds(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    """A hung PACS holds a delivery worker inside C-STORE for up to the DIMSE timeout; a
    graceful stop must not wait that long (systemd and operators give up and kill -9)."""
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    stuck = HangingStorageSCP()
    home = tmp_path / "router-home"
    port = free_port()
    write_router_home(home, router_settings(
        [storage], probe, port=port,
        endpoints=[endpoint_for(storage, ["storage"]), endpoint_for(probe, ["probe"]),
                   stuck.endpoint()],
        routing={"mirror": [probe.name, stuck.ae_title]},
        delivery={"connect_timeout": 2.0, "dimse_timeout": 20.0},
    ))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    try:
        files = write_studies(tmp_path / "files", 1, 3)
        uids = set(sop_instance_uids([f for paths in files.values() for f in paths]))
        storescu([f for paths in files.values() for f in paths], port, ROUTER_AET)
        probe.wait_for_sop_instance_uids(uids, timeout=15)
        wait_until(lambda: stuck.requests >= 1, 10, "a C-STORE reached the hung destination")

        assert router.process is not None
        started = time.monotonic()
        router.process.send_signal(signal.SIGTERM)
        wait_until(lambda: router.process is not None and router.process.poll() is not None,
                   5, "the router exiting after SIGTERM while a destination hangs")
        took = time.monotonic() - started
        print(f"\nSIGTERM with a hung destination: exit code {router.process.returncode} "
              f"in {took:.2f} s")
        assert router.process.returncode == 0

        stuck.answer()
        router.start()
        router.wait_idle(30)
        ledger = router.ledger()
        try:
            assert state_counts(ledger) == {"delivered": 3 * len(uids)}
        finally:
            ledger.close()
        assert uids <= stuck.answered
    finally:
        stop_process_quietly(router)
        stuck.close()


def _sent(files: list[Path], port: int) -> bool:
    try:
        storescu(files, port, ROUTER_AET)
    except subprocess.CalledProcessError:
        return False
    return True


def _describe(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return f"{pid} gone"
    wchan = Path(f"/proc/{pid}/wchan").read_text() if Path(f"/proc/{pid}/wchan").exists() else ""
    return f"{pid} " + " ".join(line for line in status if line.startswith(
        ("State", "PPid", "SigPnd", "ShdPnd", "SigBlk", "SigCgt", "Threads"))) + f" {wchan}"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, not yet reaped


def test_kill_9_of_the_receiver_process_loses_nothing_and_it_comes_back(
    crash_stack: CrashStack, tmp_path: Path
) -> None:
    """The receiver process dies mid-send: what it acknowledged is in the ledger and gets
    delivered; the main process starts a new receiver process, which takes the rest."""
    stack = crash_stack
    files = [f for paths in write_studies(tmp_path / "files", 2, 40, rows=128,
                                          columns=128).values() for f in paths]
    (receiver,) = stack.router.receiver_pids()
    run = start_storescu(files, stack.router.port, ROUTER_AET, tmp_path / "storescu.log")
    try:
        wait_until(lambda: stack.ledger_instance_count() >= len(files) // 4, 20,
                   "the receiver process took a quarter of the instances")
        os.kill(receiver, signal.SIGKILL)
        run.wait(30)
    finally:
        run.stop()
    acknowledged = {sop_instance_uid(f) for f in run.acknowledged()}
    assert 0 < len(acknowledged) < len(files), "the kill did not land mid-send"
    assert acknowledged <= stack.ledger_uids(), "an acknowledged instance is not in the ledger"

    restarted = wait_until(lambda: [p for p in stack.router.receiver_pids()
                                    if p != receiver and not _gone(p)], 20,
                           "a new receiver process")
    rest = [f for f in files if sop_instance_uid(f) not in acknowledged]
    wait_until(lambda: _sent(rest, stack.router.port), 20,
               "the new receiver process takes the rest")
    stack.router.wait_idle(60)
    assert set(stack.state_counts()) == {"delivered"}
    _assert_delivered_once(set(sop_instance_uids(files)), stack)
    assert stack.router.process is not None and stack.router.process.poll() is None
    print(f"\nreceiver process killed after {len(acknowledged)} of {len(files)}: "
          f"restarted as {restarted}, 0 lost")


def test_receiver_processes_end_with_the_main_process(crash_stack: CrashStack) -> None:
    receivers = crash_stack.router.receiver_pids()
    assert receivers, "no receiver process"
    crash_stack.router.kill()

    def states() -> str:
        return "; ".join(_describe(pid) for pid in receivers)

    try:
        wait_until(lambda: all(_gone(pid) for pid in receivers), 10,
                   "receiver processes gone after the main process was killed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {states()}") from None
