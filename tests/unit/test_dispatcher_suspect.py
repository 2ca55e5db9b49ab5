"""Several associations per destination, and suspect deliveries (issue items 1 and 18):
workers of one endpoint claim disjoint deliveries and send at once; an instance the
destination never answers holds neither the queue behind it nor its worker's batch, and is
retried alone, on its own association and schedule, until delivered or failed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.support.orthanc import wait_until
from tests.support.unitkit import FakeSender, delivery_rows, endpoint, generated, ingest_to

from dde.config import EndpointSettings
from dde.delivery.dispatcher import Dispatcher
from dde.delivery.retry import RetryPolicy
from dde.endpoints.load import LoadBook
from dde.endpoints.sending import SendResult, Shipment
from dde.store.ledger import Ledger
from dde.store.spool import Spool, encode_file_meta

FAST = RetryPolicy(max_attempts=3, base=0.02, cap=0.05)
TIMEOUT = 10.0
SILENCE = "no C-STORE response within 20 s (association aborted or timed out)"


class Recorder(FakeSender):
    """A fake sender keeping the order of prepare/send/release calls, and how many sends
    (of all recorders) are in flight at once."""

    in_flight = 0
    max_in_flight = 0
    flight_lock = threading.Lock()

    def __init__(self, script: Callable[[Shipment], SendResult]) -> None:
        super().__init__(script)
        self.log: list[tuple[str, Any]] = []

    def prepare(self, shipments: list[Shipment]) -> None:
        super().prepare(shipments)
        self.log.append(("prepare", [s.sop_instance_uid for s in shipments]))

    def send(self, shipment: Shipment) -> SendResult:
        self.log.append(("send", shipment.sop_instance_uid))
        with Recorder.flight_lock:
            Recorder.in_flight += 1
            Recorder.max_in_flight = max(Recorder.max_in_flight, Recorder.in_flight)
        try:
            return super().send(shipment)
        finally:
            with Recorder.flight_lock:
                Recorder.in_flight -= 1

    def release(self) -> None:
        super().release()
        self.log.append(("release", None))


@pytest.fixture
def started() -> Iterator[list[Dispatcher]]:
    items: list[Dispatcher] = []
    Recorder.in_flight = Recorder.max_in_flight = 0
    yield items
    for item in items:
        item.stop()


def spooled(ledger: Ledger, spool: Spool, name: str = "A") -> tuple[int, str]:
    instance = generated()
    written = spool.write(encode_file_meta(instance.sop_class_uid, instance.sop_instance_uid,
                                           instance.transfer_syntax_uid), instance.dataset)
    instance_id = ingest_to(ledger, [name], spool_path=written.relative_path,
                            sop_instance_uid=instance.sop_instance_uid)
    return instance_id, instance.sop_instance_uid


def row(ledger: Ledger, instance_id: int, name: str = "A") -> tuple[Any, ...]:
    """(id, state, attempts, last_error, next_attempt_at)."""
    return delivery_rows(ledger, instance_id)[name]


def dispatcher_with(started: list[Dispatcher], ledger: Ledger, spool: Spool,
                    script: Callable[[Shipment], SendResult], *, associations: int,
                    policy: RetryPolicy = FAST) -> tuple[Dispatcher, list[Recorder]]:
    """A dispatcher whose every sender (one per association, one for the suspect lane) is
    a new :class:`Recorder` running ``script``."""
    made: list[Recorder] = []

    def factory(settings: EndpointSettings) -> Recorder:
        recorder = Recorder(script)
        made.append(recorder)
        return recorder

    dispatcher = Dispatcher(ledger, spool, policy, LoadBook(60.0), factory, batch_size=16,
                            idle_release=0.05, poll=0.05, retention=3600,
                            associations=associations)
    started.append(dispatcher)
    return dispatcher, made


def test_a_silent_instance_does_not_hold_the_ten_queued_behind_it(
        ledger: Ledger, spool: Spool, started: list[Dispatcher]) -> None:
    """Item 1: the first of 11 instances gets no answer; with two associations the other
    ten are delivered within seconds, while that C-STORE still waits (the rest of the batch
    of the stuck worker is handed to the other one)."""
    silent_id, silent_uid = spooled(ledger, spool)
    others = [spooled(ledger, spool) for _ in range(10)]
    waiting, answer = threading.Event(), threading.Event()

    def script(shipment: Shipment) -> SendResult:
        if shipment.sop_instance_uid == silent_uid:
            waiting.set()
            answer.wait(TIMEOUT * 3)
            return SendResult.no_response(SILENCE)
        return SendResult.delivered("ok")

    dispatcher, _ = dispatcher_with(started, ledger, spool, script, associations=2)
    begin = time.monotonic()
    dispatcher.sync([endpoint("A")])
    try:
        assert waiting.wait(TIMEOUT)
        wait_until(lambda: all(row(ledger, i)[1] == "delivered" for i, _ in others), 5.0,
                   "the ten others delivered while the silent one waits")
        took = time.monotonic() - begin
        assert not answer.is_set() and row(ledger, silent_id)[1:3] == ("pending", 0)
        print(f"\nten others delivered {took:.1f} s after the start, the silent one in hand")
    finally:
        answer.set()
    wait_until(lambda: row(ledger, silent_id)[2] >= 1, TIMEOUT, "the silence recorded")
    assert row(ledger, silent_id)[3] == SILENCE
    assert row(ledger, silent_id)[1] != "delivered"
    assert set(ledger.queue.suspects("A")) == {row(ledger, silent_id)[0]}


def test_a_suspect_is_retried_alone_on_its_own_association_until_it_fails(
        ledger: Ledger, spool: Spool, started: list[Dispatcher]) -> None:
    """With one association: the silent instance costs its worker one wait, the rest of the
    batch goes on at once; its retries are each alone (one shipment prepared, the
    association released right after) and it ends failed with the reason."""
    silent_id, silent_uid = spooled(ledger, spool)
    others = [spooled(ledger, spool) for _ in range(5)]

    def script(shipment: Shipment) -> SendResult:
        if shipment.sop_instance_uid == silent_uid:
            return SendResult.no_response(SILENCE)
        return SendResult.delivered("ok")

    dispatcher, made = dispatcher_with(started, ledger, spool, script, associations=1)
    dispatcher.sync([endpoint("A")])

    wait_until(lambda: row(ledger, silent_id)[1] == "failed", TIMEOUT, "the suspect failed")
    assert row(ledger, silent_id)[2:4] == (FAST.max_attempts, SILENCE)
    assert all(row(ledger, i)[1:3] == ("delivered", 1) for i, _ in others)
    assert ledger.queue.suspects("A") == {row(ledger, silent_id)[0]: SILENCE}
    main, lane = made  # the lane's sender was made when it got its first suspect
    sends = [uid for kind, uid in main.log if kind == "send"]
    assert sends[0] == silent_uid and sorted(sends[1:]) == sorted(u for _, u in others)
    assert sends.count(silent_uid) == 1  # never again inside a batch with others
    retries = [entry for entry in lane.log if entry[0] != "release"]
    assert retries == [("prepare", [silent_uid]), ("send", silent_uid)] * \
        (FAST.max_attempts - 1)
    assert lane.log.count(("release", None)) >= FAST.max_attempts - 1
    for index, entry in enumerate(lane.log):  # each retry ends its own association
        if entry[0] == "send":
            assert lane.log[index + 1] == ("release", None)


def test_a_suspect_that_answers_later_is_delivered(
        ledger: Ledger, spool: Spool, started: list[Dispatcher]) -> None:
    silent_id, silent_uid = spooled(ledger, spool)
    answered = threading.Event()

    def script(shipment: Shipment) -> SendResult:
        if shipment.sop_instance_uid == silent_uid and not answered.is_set():
            answered.set()
            return SendResult.no_response(SILENCE)
        return SendResult.delivered("ok")

    dispatcher, _ = dispatcher_with(started, ledger, spool, script, associations=1)
    dispatcher.sync([endpoint("A")])

    wait_until(lambda: row(ledger, silent_id)[1] == "delivered", TIMEOUT, "delivered")
    assert row(ledger, silent_id)[2] == 2
    assert ledger.queue.suspects("A") == {}


def test_workers_of_one_endpoint_send_at_once_and_never_the_same_delivery(
        ledger: Ledger, spool: Spool, started: list[Dispatcher]) -> None:
    items = [spooled(ledger, spool) for _ in range(60)]

    def script(shipment: Shipment) -> SendResult:
        time.sleep(0.02)
        return SendResult.delivered("ok")

    dispatcher, made = dispatcher_with(started, ledger, spool, script, associations=3)
    dispatcher.sync([endpoint("A")])

    wait_until(lambda: all(row(ledger, i)[1] == "delivered" for i, _ in items), TIMEOUT,
               "all delivered")
    sent = [uid for recorder in made for kind, uid in recorder.log if kind == "send"]
    assert sorted(sent) == sorted(uid for _, uid in items)  # each exactly once
    assert Recorder.max_in_flight >= 2
    assert len(made) == 3  # no sender for the suspect lane: it had nothing to do
    assert sum(1 for recorder in made if any(k == "send" for k, _ in recorder.log)) >= 2


def test_an_endpoints_associations_override_the_default(
        ledger: Ledger, spool: Spool, started: list[Dispatcher]) -> None:
    dispatcher, _ = dispatcher_with(started, ledger, spool, lambda s: SendResult.delivered(),
                                    associations=2)
    dispatcher.sync([endpoint("A"), endpoint("B", associations=4)])
    crews = dispatcher.workers()
    assert [len(crews["A"].workers), len(crews["B"].workers)] == [2, 4]

    dispatcher.sync([endpoint("A"), endpoint("B", associations=1)])  # a change restarts it
    assert len(dispatcher.workers()["B"].workers) == 1 and not crews["B"].alive
    assert dispatcher.workers()["A"] is crews["A"]


def test_claims_left_by_a_crash_are_cleared_at_start_and_stop_leaves_none(
        ledger: Ledger, spool: Spool, started: list[Dispatcher]) -> None:
    items = [spooled(ledger, spool) for _ in range(3)]
    ledger.queue.claim("A", "the-process-that-crashed", time.time(), 10, 3600.0)
    dispatcher, _ = dispatcher_with(started, ledger, spool, lambda s: SendResult.delivered(),
                                    associations=2)

    dispatcher.start([endpoint("A")])

    wait_until(lambda: all(row(ledger, i)[1] == "delivered" for i, _ in items), TIMEOUT,
               "delivered despite the stale claims")
    spooled(ledger, spool)
    dispatcher.stop()
    assert ledger.queue.claims() == {}
