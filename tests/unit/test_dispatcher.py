"""The dispatcher: per-endpoint workers over the ledger, outcomes, backoff, spool clean-up."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.orthanc import wait_until
from tests.support.unitkit import FakeSender, delivery_rows, endpoint, generated, ingest_to

from dde.config import EndpointSettings
from dde.delivery.dispatcher import Dispatcher, EndpointWorker
from dde.delivery.retry import RetryPolicy
from dde.endpoints.load import LoadBook
from dde.endpoints.sending import SendResult, Shipment
from dde.store.database import Database
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.queue import DeliveryQueue
from dde.store.records import QueuedDelivery
from dde.store.spool import Spool, encode_file_meta

FAST = RetryPolicy(max_attempts=3, base=0.02, cap=0.05)
SLOW = RetryPolicy(max_attempts=5, base=60.0, cap=120.0)
TIMEOUT = 10.0


class Recorder(FakeSender):
    """A fake sender that also keeps the order of prepare/send/release calls."""

    def __init__(self, script: Callable[[Shipment], SendResult] | None = None) -> None:
        super().__init__(script)
        self.log: list[str] = []

    def prepare(self, shipments: list[Shipment]) -> None:
        super().prepare(shipments)
        self.log.append("prepare")

    def send(self, shipment: Shipment) -> SendResult:
        self.log.append("send")
        return super().send(shipment)

    def release(self) -> None:
        super().release()
        self.log.append("release")


class WatchedQueue(DeliveryQueue):
    """A delivery queue that tells when a worker found it empty."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.found_empty = threading.Event()

    def claim(self, endpoint: str, owner: str, now: float, limit: int, lease: float, *,
              suspects: bool = False,
              taken_over: list[int] | None = None) -> list[QueuedDelivery]:
        due = super().claim(endpoint, owner, now, limit, lease, suspects=suspects,
                            taken_over=taken_over)
        if not due and not suspects:
            self.found_empty.set()
        return due


class WatchedLedger(Ledger):
    """A ledger whose queue tells when a worker found it empty."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.queue = WatchedQueue(self.database)
        self.found_empty = self.queue.found_empty


@pytest.fixture
def watched_ledger(tmp_path: Path) -> Iterator[WatchedLedger]:
    book = WatchedLedger(tmp_path / "watched.sqlite3")
    yield book
    book.close()


def spooled(ledger: Ledger, spool: Spool, destinations: list[str],
            mirrors: list[str] | None = None) -> tuple[int, str, str]:
    """Spool a generated instance and commit it; (instance id, spool path, SOP inst UID)."""
    instance = generated()
    meta = encode_file_meta(instance.sop_class_uid, instance.sop_instance_uid,
                            instance.transfer_syntax_uid)
    written = spool.write(meta, instance.dataset)
    instance_id = ingest_to(ledger, destinations, mirrors or [],
                            spool_path=written.relative_path,
                            sop_instance_uid=instance.sop_instance_uid)
    return instance_id, written.relative_path, instance.sop_instance_uid


def state(ledger: Ledger, instance_id: int, name: str) -> tuple[Any, ...]:
    """(id, state, attempts, last_error, next_attempt_at) of one delivery."""
    return delivery_rows(ledger, instance_id)[name]


def start_worker(started: list[Any], name: str, ledger: Ledger, spool: Spool, sender: Any,
                 policy: RetryPolicy = FAST, loads: LoadBook | None = None, *,
                 idle_release: float = 0.05, poll: float = 0.05,
                 batch_size: int = 16) -> EndpointWorker:
    worker = EndpointWorker(endpoint(name), ledger, spool, sender, policy,
                            loads or LoadBook(60.0), batch_size=batch_size,
                            idle_release=idle_release, poll=poll)
    started.append(worker)
    worker.start()
    return worker


def make_dispatcher(started: list[Any], ledger: Ledger, spool: Spool,
                    senders: dict[str, Any], policy: RetryPolicy = FAST,
                    retention: float = 0.0, poll: float = 0.05,
                    idle_release: float = 0.05) -> Dispatcher:
    def factory(settings: EndpointSettings) -> Any:
        return senders[settings.name]

    dispatcher = Dispatcher(ledger, spool, policy, LoadBook(60.0), factory, batch_size=16,
                            idle_release=idle_release, poll=poll, retention=retention)
    started.append(dispatcher)
    return dispatcher


def delivered(ledger: Ledger, instance_id: int, name: str) -> bool:
    return bool(state(ledger, instance_id, name)[1] == "delivered")


def deliver_everywhere(dispatcher: Dispatcher, endpoints: list[EndpointSettings],
                       ledger: Ledger, instance_id: int, names: Iterable[str]) -> None:
    """Start the workers of ``endpoints`` and wait until ``instance_id`` is delivered to
    each of ``names``."""
    dispatcher.sync(endpoints)
    for name in names:
        wait_until(lambda name=name: delivered(ledger, instance_id, name), TIMEOUT,
                   f"{name} delivered")


# -- delivered ----------------------------------------------------------------------------
def test_delivered_outcomes_are_recorded_with_the_spool_bytes(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    items = [spooled(ledger, spool, ["A"]) for _ in range(5)]
    sender = Recorder()
    loads = LoadBook(60.0)

    start_worker(workers, "A", ledger, spool, sender, loads=loads)

    wait_until(lambda: all(delivered(ledger, i, "A") for i, _, _ in items), TIMEOUT,
               "all delivered")
    assert sorted(sender.sent_uids()) == sorted(uid for _, _, uid in items)
    by_uid = dict(zip(sender.sent_uids(), sender.sent_bytes, strict=True))
    for _, path, uid in items:
        assert by_uid[uid] == spool.path_of(path).read_bytes()
    assert all(state(ledger, i, "A")[2:4] == (1, None) for i, _, _ in items)
    assert loads.stored("A") == 5
    assert [d for d in ledger.diagnostics.deliveries() if d.delivered_at is None] == []


def test_one_batch_is_sent_over_one_association(ledger: Ledger, spool: Spool,
                                                 workers: list[Any]) -> None:
    for _ in range(4):
        spooled(ledger, spool, ["A"])
    sender = Recorder()

    start_worker(workers, "A", ledger, spool, sender, idle_release=5.0)
    wait_until(lambda: len(sender.sent) == 4, TIMEOUT, "four sends")

    assert sender.log[:5] == ["prepare", "send", "send", "send", "send"]
    assert len(sender.prepared[0]) == 4


def test_spool_file_is_removed_only_when_every_delivery_is_delivered(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    instance_id, path, uid = spooled(ledger, spool, ["A"], ["PROBE"])
    gate = threading.Event()
    probe = FakeSender(lambda s: SendResult.delivered("ok") if gate.is_set()
                       else SendResult.unreachable("probe down"))
    dispatcher = make_dispatcher(workers, ledger, spool, {"A": FakeSender(), "PROBE": probe})
    dispatcher.sync([endpoint("A"), endpoint("PROBE", ["probe"])])

    wait_until(lambda: delivered(ledger, instance_id, "A"), TIMEOUT, "A delivered")
    assert dispatcher.clean_spool_once() == 0
    assert spool.path_of(path).exists()

    gate.set()
    wait_until(lambda: delivered(ledger, instance_id, "PROBE"), TIMEOUT, "probe delivered")
    assert dispatcher.clean_spool_once() == 1

    assert not spool.path_of(path).exists()
    assert ledger.operators.where(uid)[0].spool_path is None
    assert dispatcher.clean_spool_once() == 0


def test_the_running_janitor_cleans_after_deliveries(ledger: Ledger, spool: Spool,
                                                     workers: list[Any]) -> None:
    items = [spooled(ledger, spool, ["A"]) for _ in range(3)]
    dispatcher = make_dispatcher(workers, ledger, spool, {"A": FakeSender()})

    dispatcher.start([endpoint("A")])

    wait_until(lambda: not any(spool.path_of(p).exists() for _, p, _ in items), TIMEOUT,
               "spool files removed by the janitor")
    assert ledger.spool_index.spool_paths_in_use() == set()


def test_janitor_keeps_files_within_retention(ledger: Ledger, spool: Spool,
                                              workers: list[Any]) -> None:
    instance_id, path, _ = spooled(ledger, spool, ["A"])
    dispatcher = make_dispatcher(workers, ledger, spool, {"A": FakeSender()}, retention=3600)
    dispatcher.sync([endpoint("A")])

    wait_until(lambda: delivered(ledger, instance_id, "A"), TIMEOUT, "delivered")

    assert dispatcher.clean_spool_once() == 0
    assert spool.path_of(path).exists()


# -- an endpoint that is down ----------------------------------------------------------------
def test_unreachable_spends_no_attempt_and_records_the_error(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    items = [spooled(ledger, spool, ["DOWN"]) for _ in range(3)]
    sender = FakeSender(lambda s: SendResult.unreachable("connection refused"))

    worker = start_worker(workers, "DOWN", ledger, spool, sender)

    wait_until(lambda: worker.consecutive_unreachable >= 3, TIMEOUT, "three tries")
    wait_until(lambda: all(state(ledger, i, "DOWN")[3] == "connection refused"
                           for i, _, _ in items), TIMEOUT, "errors recorded")
    assert [state(ledger, i, "DOWN")[1:3] for i, _, _ in items] == [("pending", 0)] * 3
    assert worker.last_error == "connection refused"
    assert sender.releases >= 1


def test_a_dead_destination_never_blocks_another(ledger: Ledger, spool: Spool,
                                                 workers: list[Any]) -> None:
    items = [spooled(ledger, spool, ["GOOD"], ["DOWN"]) for _ in range(6)]
    down = FakeSender(lambda s: SendResult.unreachable("association rejected"))
    good = FakeSender()
    dispatcher = make_dispatcher(workers, ledger, spool, {"GOOD": good, "DOWN": down})

    dispatcher.sync([endpoint("GOOD"), endpoint("DOWN")])

    wait_until(lambda: all(delivered(ledger, i, "GOOD") for i, _, _ in items), TIMEOUT,
               "every instance on the healthy destination")
    assert all(state(ledger, i, "DOWN")[1:3] == ("pending", 0) for i, _, _ in items)
    assert len(good.sent) == 6
    assert set(dispatcher.workers()) == {"GOOD", "DOWN"}


def test_a_hanging_destination_never_blocks_another(ledger: Ledger, spool: Spool,
                                                    workers: list[Any]) -> None:
    items = [spooled(ledger, spool, ["HANG"], ["GOOD"]) for _ in range(4)]
    hanging, release = threading.Event(), threading.Event()

    def hang(shipment: Shipment) -> SendResult:
        hanging.set()
        release.wait(TIMEOUT)
        return SendResult.unreachable("timed out")

    good = FakeSender()
    dispatcher = make_dispatcher(workers, ledger, spool, {"GOOD": good,
                                                          "HANG": FakeSender(hang)})
    try:
        dispatcher.sync([endpoint("HANG"), endpoint("GOOD")])
        assert hanging.wait(TIMEOUT)

        wait_until(lambda: all(delivered(ledger, i, "GOOD") for i, _, _ in items), TIMEOUT,
                   "healthy destination served while the other hangs")
    finally:
        release.set()


# -- refusals ----------------------------------------------------------------------------------
def test_permanent_refusal_fails_at_once_with_the_reason(ledger: Ledger, spool: Spool,
                                                         workers: list[Any]) -> None:
    instance_id, _, _ = spooled(ledger, spool, ["A"])
    sender = FakeSender(lambda s: SendResult.refused("0x0122 (SOP class not supported)",
                                                     permanent=True))

    start_worker(workers, "A", ledger, spool, sender, policy=SLOW)

    wait_until(lambda: state(ledger, instance_id, "A")[1] == "failed", TIMEOUT, "failed")
    assert state(ledger, instance_id, "A")[2:4] == (1, "0x0122 (SOP class not supported)")
    assert len(sender.sent) == 1


def test_transient_refusal_is_rescheduled_with_an_attempt_spent(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    instance_id, _, _ = spooled(ledger, spool, ["A"])
    sender = FakeSender(lambda s: SendResult.refused("0xA700 (out of resources)"))
    before = time.time()

    start_worker(workers, "A", ledger, spool, sender, policy=SLOW)

    wait_until(lambda: state(ledger, instance_id, "A")[2] == 1, TIMEOUT, "one attempt")
    _, status, attempts, error, next_attempt_at = state(ledger, instance_id, "A")
    assert (status, attempts, error) == ("pending", 1, "0xA700 (out of resources)")
    # SLOW: the first retry comes 30..60 s later.
    assert before + 30 <= next_attempt_at <= time.time() + 60
    assert len(sender.sent) == 1


def test_gives_up_after_max_attempts(ledger: Ledger, spool: Spool,
                                     workers: list[Any]) -> None:
    instance_id, _, _ = spooled(ledger, spool, ["A"])
    sender = FakeSender(lambda s: SendResult.refused("HTTP 500"))

    start_worker(workers, "A", ledger, spool, sender, policy=FAST)

    wait_until(lambda: state(ledger, instance_id, "A")[1] == "failed", TIMEOUT, "failed")
    assert state(ledger, instance_id, "A")[2:4] == (FAST.max_attempts, "HTTP 500")
    assert len(sender.sent) == FAST.max_attempts


def test_missing_spool_file_fails_the_delivery(ledger: Ledger, spool: Spool,
                                               workers: list[Any]) -> None:
    instance_id, path, _ = spooled(ledger, spool, ["A"])
    spool.remove(path)
    sender = FakeSender()

    start_worker(workers, "A", ledger, spool, sender)

    wait_until(lambda: state(ledger, instance_id, "A")[1] == "failed", TIMEOUT, "failed")
    assert state(ledger, instance_id, "A")[3] == "spool file is missing"
    assert sender.sent == []


# -- associations and wake-ups -------------------------------------------------------------------
def test_association_is_released_when_the_queue_becomes_idle(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    spooled(ledger, spool, ["A"])
    spooled(ledger, spool, ["A"])
    sender = Recorder()

    worker = start_worker(workers, "A", ledger, spool, sender, idle_release=0.05, poll=0.05)

    wait_until(lambda: "release" in sender.log, TIMEOUT, "released while idle")
    assert worker.alive
    first_release = sender.log.index("release")
    assert sender.log[:first_release].count("send") == 2


def test_stop_releases_the_association(ledger: Ledger, spool: Spool) -> None:
    sender = Recorder()
    worker = EndpointWorker(endpoint("A"), ledger, spool, sender, FAST, LoadBook(60.0),
                            batch_size=4, idle_release=3600, poll=3600)
    worker.start()

    worker.stop(timeout=TIMEOUT)

    assert not worker.alive
    assert sender.log[-1:] == ["release"]


def test_wake_delivers_new_work_without_waiting_for_the_poll(
        watched_ledger: WatchedLedger, spool: Spool, workers: list[Any]) -> None:
    dispatcher = make_dispatcher(workers, watched_ledger, spool, {"A": FakeSender()},
                                 poll=3600, idle_release=3600)  # an hour unless woken
    dispatcher.sync([endpoint("A")])
    assert watched_ledger.found_empty.wait(TIMEOUT)
    instance_id, _, _ = spooled(watched_ledger, spool, ["A"])

    dispatcher.wake(["A", "NOT-CONFIGURED"])

    wait_until(lambda: delivered(watched_ledger, instance_id, "A"), 5.0, "woken delivery")


# -- configuration ---------------------------------------------------------------------------
def test_sync_starts_new_stops_removed_and_restarts_changed_workers(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    made: list[str] = []

    def factory(settings: EndpointSettings) -> FakeSender:
        made.append(settings.name)
        return FakeSender()

    dispatcher = Dispatcher(ledger, spool, FAST, LoadBook(60.0), factory, batch_size=4,
                            idle_release=0.05, poll=0.05, retention=0)
    workers.append(dispatcher)
    dispatcher.sync([endpoint("A"), endpoint("B")])
    first = dispatcher.workers()

    dispatcher.sync([endpoint("B"), endpoint("C")])
    second = dispatcher.workers()
    dispatcher.sync([endpoint("B", port=11112), endpoint("C")])
    third = dispatcher.workers()

    assert set(first) == {"A", "B"} and set(second) == {"B", "C"}
    assert not first["A"].alive
    assert second["B"] is first["B"]
    assert third["B"] is not first["B"] and not first["B"].alive
    assert third["C"] is second["C"] and third["C"].alive
    assert made == ["A", "B", "C", "B"]


def test_new_delivery_settings_restart_every_worker_with_them(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    dispatcher = make_dispatcher(workers, ledger, spool, {"A": FakeSender(), "B": FakeSender()})
    dispatcher.sync([endpoint("A"), endpoint("B")])
    before = dispatcher.workers()
    slower = RetryPolicy(3, 5.0, 60.0)

    dispatcher.reconfigure(slower, batch_size=2, idle_release=1.0, poll=0.5, retention=9.0,
                           nice=0)
    dispatcher.sync([endpoint("A"), endpoint("B")])

    after = dispatcher.workers()
    assert set(after) == {"A", "B"}
    for name in ("A", "B"):
        assert after[name] is not before[name] and not before[name].alive
        assert after[name].alive
        worker = after[name].workers[0]
        assert worker._policy is slower and worker._batch_size == 2
    instance_id, _, _ = spooled(ledger, spool, ["A"])
    dispatcher.wake(["A"])
    wait_until(lambda: delivered(ledger, instance_id, "A"), TIMEOUT, "delivered after restart")


def test_reconfiguring_a_hanging_endpoint_does_not_block_wake(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    """``wake`` runs on the receive path (after each commit): a worker stuck in a send to a
    hanging PACS must not hold it while ``sync`` waits for that worker to stop."""
    spooled(ledger, spool, ["HANG"])
    hanging, release = threading.Event(), threading.Event()

    def hang(shipment: Shipment) -> SendResult:
        hanging.set()
        release.wait(TIMEOUT)
        return SendResult.delivered("late")

    dispatcher = make_dispatcher(workers, ledger, spool, {"GOOD": FakeSender(),
                                                          "HANG": FakeSender(hang)})
    dispatcher.sync([endpoint("HANG"), endpoint("GOOD")])
    assert hanging.wait(TIMEOUT)
    stuck = dispatcher.workers()["HANG"]
    stopping = threading.Event()
    original_stop = stuck.stop

    def stop(timeout: float = 30.0, grace: float = 2.0) -> None:
        stopping.set()
        original_stop(timeout, grace)

    stuck.stop = stop  # type: ignore[method-assign]
    reconfigure = threading.Thread(
        target=dispatcher.sync, args=([endpoint("HANG", port=2), endpoint("GOOD")],))
    woke = threading.Event()
    try:
        reconfigure.start()
        assert stopping.wait(TIMEOUT)  # sync now waits for the stuck worker to stop
        def wake() -> None:
            dispatcher.wake(["GOOD"])
            woke.set()

        threading.Thread(target=wake, daemon=True).start()

        assert woke.wait(2.0), "wake() blocked behind a reconfiguration"
    finally:
        release.set()
        reconfigure.join(TIMEOUT)


def test_a_worker_outlives_an_unreachable_ledger_and_frees_what_it_held(
        ledger: Ledger, spool: Spool, workers: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger failing anywhere in the worker's loop (its database restarting) pauses
    delivery; it never ends the worker, and claims the failure left are given back."""
    queue = ledger.queue
    real_next_due, real_outcomes = queue.next_due_at, queue.record_outcomes
    failures = {"next_due_at": 2, "record_outcomes": 1}

    def flaky(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if failures[name] > 0:
                failures[name] -= 1
                raise LedgerError("server closed the connection unexpectedly")
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(queue, "next_due_at", flaky("next_due_at", real_next_due))
    monkeypatch.setattr(queue, "record_outcomes", flaky("record_outcomes", real_outcomes))
    worker = start_worker(workers, "A", ledger, spool, FakeSender())
    wait_until(lambda: failures["next_due_at"] == 0, TIMEOUT, "the idle loop failing twice")
    instance_id, _, _ = spooled(ledger, spool, ["A"])

    wait_until(lambda: delivered(ledger, instance_id, "A"), TIMEOUT,
               "a delivery after the failures (one outcome lost, the claim given back)")
    assert worker._thread.is_alive()
    assert ledger.queue.claims("A") == {}
