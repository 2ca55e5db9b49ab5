"""Claims without the writer lock: on PostgreSQL the workers of every node claim at once
(``FOR UPDATE SKIP LOCKED``), and the claim insert itself refuses to write over a live
claim, so no delivery is ever held by two owners, and a claim never queues behind the
writer lock that ingest commits and outcomes take."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from tests.unit.test_store_queue import LEASE, queue_of

from dde.store.ledger import Ledger
from dde.store.postgres import WRITER_LOCK
from dde.store.queue import DeliveryQueue
from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState


def test_the_claim_insert_never_writes_over_a_live_claim(ledger: Ledger) -> None:
    """The interleaving READ COMMITTED allows: another owner's claim committed after the
    candidates were chosen. The guarded insert leaves it, and says which it took."""
    ids = queue_of(ledger, 3)
    now = time.time() + 1
    ledger.queue.claim("A", "w1", now, 1, LEASE)  # w1 holds ids[0]

    with ledger.database.transaction(durable=False, serialised=False) as connection:
        won = DeliveryQueue._take(connection, ids, "w2", now, now + LEASE)

    assert won == set(ids[1:])
    assert ledger.queue.claims("A") == {ids[0]: "w1", ids[1]: "w2", ids[2]: "w2"}


def test_a_claim_lost_to_another_claimer_is_neither_returned_nor_a_take_over(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates whose expired claim another claimer renewed first (between the candidate
    query and the insert) are not claimed, and not reported as taken over."""
    ids = queue_of(ledger, 2)
    now = time.time() + 1
    ledger.queue.claim("A", "node1/A/1/x", now, 2, lease=1.0)  # node1 then dies
    take = DeliveryQueue._take

    def raced(connection: object, chosen: list[int], owner: str, at: float,
              until: float) -> set[int]:
        connection.execute(  # type: ignore[attr-defined]
            "UPDATE delivery_claims SET owner = 'node3/A/1/z', expires_at = ?"
            " WHERE delivery_id = ?", (at + LEASE, ids[0]))
        return take(connection, chosen, owner, at, until)  # type: ignore[arg-type]

    monkeypatch.setattr(DeliveryQueue, "_take", staticmethod(raced))
    taken: list[int] = []

    later = ledger.queue.claim("A", "node2/A/1/y", now + 5, 2, LEASE, taken_over=taken)

    assert [d.id for d in later] == [ids[1]]
    assert taken == [ids[1]]
    assert ledger.queue.claims("A") == {ids[0]: "node3/A/1/z", ids[1]: "node2/A/1/y"}


def test_concurrent_claimers_of_two_nodes_claim_each_delivery_exactly_once(
        pg_url: str) -> None:
    """Six workers on two nodes (each thread its own connection) claim one endpoint's queue
    in small batches; half record each outcome at once, half hold their claims to the
    end. Every delivery is claimed once, by one owner."""
    nodes = [Ledger(url=pg_url), Ledger(url=pg_url)]
    try:
        ids = queue_of(nodes[0], 90)
        claimed: list[tuple[int, str]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 60

        def work(number: int) -> None:
            ledger = nodes[number % 2]
            owner = f"node{number % 2}/A/{number}/x"
            held: list[int] = []
            try:
                while time.monotonic() < deadline:
                    with lock:
                        if len(claimed) >= len(ids):
                            break
                    batch = ledger.queue.claim("A", owner, time.time(), 2, LEASE)
                    with lock:
                        claimed.extend((d.id, owner) for d in batch)
                    if number % 2:
                        ledger.queue.record_outcomes(
                            [DeliveryOutcome(d.id, DeliveryState.DELIVERED) for d in batch])
                    else:
                        held.extend(d.id for d in batch)
                ledger.queue.record_outcomes(
                    [DeliveryOutcome(i, DeliveryState.DELIVERED) for i in held])
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert sorted(i for i, _ in claimed) == ids  # each once: never two owners
        assert nodes[0].queue.queued_counts() == {}
        assert nodes[0].queue.claims() == {}
    finally:
        for node in nodes:
            node.close()


def test_a_claim_does_not_wait_for_the_writer_lock(pg_url: str) -> None:
    """Another session holds the writer lock in an open transaction (an ingest commit, a
    node frozen mid-transaction): a serialised write waits (up to 60 s), a claim does not."""
    ledger = Ledger(url=pg_url)
    holder = psycopg.connect(pg_url, autocommit=True)
    try:
        ids = queue_of(ledger, 2)
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
        renewed = threading.Thread(target=ledger.queue.renew, args=("w0", ids, 0.0))
        renewed.start()
        result: list[list[int]] = []
        claimer = threading.Thread(target=lambda: result.append(
            [d.id for d in ledger.queue.claim("A", "w1", time.time() + 1, 10, LEASE)]))
        started = time.monotonic()
        claimer.start()
        claimer.join(5)
        took = time.monotonic() - started

        assert result == [ids] and took < 5
        assert renewed.is_alive()  # the lock is held indeed: serialised writers wait
        holder.execute("ROLLBACK")
        renewed.join(10)
        assert not renewed.is_alive()
    finally:
        holder.close()
        ledger.close()
