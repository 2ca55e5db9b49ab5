"""The delivery queue's claims (leases) and suspect deliveries: several workers of one
endpoint never hold the same delivery, a crash's claims block nothing, a suspect delivery
is claimed only alone, by the suspect lane."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.unitkit import delivery_rows, ingest_to

from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState

LEASE = 60.0


def queue_of(ledger: Ledger, count: int, endpoint: str = "A") -> list[int]:
    """``count`` instances routed to ``endpoint``; their delivery ids, in queue order."""
    ids = []
    for _ in range(count):
        instance_id = ingest_to(ledger, [endpoint])
        ids.append(delivery_rows(ledger, instance_id)[endpoint][0])
    return ids


def test_two_workers_claim_disjoint_deliveries_in_queue_order(ledger: Ledger) -> None:
    ids = queue_of(ledger, 5)
    now = time.time() + 1

    first = ledger.queue.claim("A", "w1", now, 3, LEASE)
    second = ledger.queue.claim("A", "w2", now, 3, LEASE)
    third = ledger.queue.claim("A", "w3", now, 3, LEASE)

    assert [d.id for d in first] == ids[:3]
    assert [d.id for d in second] == ids[3:]
    assert third == []
    assert ledger.queue.claims("A") == {**dict.fromkeys(ids[:3], "w1"),
                                        **dict.fromkeys(ids[3:], "w2")}
    assert ledger.queue.queued_counts() == {"A": 5}  # claimed is still pending


def test_claims_are_per_endpoint(ledger: Ledger) -> None:
    a = queue_of(ledger, 2, "A")
    b = queue_of(ledger, 2, "B")
    now = time.time() + 1

    assert [d.id for d in ledger.queue.claim("A", "w1", now, 10, LEASE)] == a
    assert [d.id for d in ledger.queue.claim("B", "w1", now, 10, LEASE)] == b


def test_an_expired_claim_is_taken_by_another_worker(ledger: Ledger) -> None:
    ids = queue_of(ledger, 2)
    now = time.time() + 1
    ledger.queue.claim("A", "w1", now, 10, lease=5.0)

    assert ledger.queue.claim("A", "w2", now + 4.9, 10, LEASE) == []
    taken = ledger.queue.claim("A", "w2", now + 5.1, 10, LEASE)

    assert [d.id for d in taken] == ids


def test_renew_extends_only_the_owners_claims(ledger: Ledger) -> None:
    ids = queue_of(ledger, 2)
    now = time.time() + 1
    ledger.queue.claim("A", "w1", now, 1, lease=5.0)
    ledger.queue.claim("A", "w2", now, 1, lease=5.0)

    ledger.queue.renew("w1", ids, now + 100)

    assert [d.id for d in ledger.queue.claim("A", "w3", now + 10, 10, LEASE)] == [ids[1]]


def test_release_gives_back_only_the_owners_claims(ledger: Ledger) -> None:
    ids = queue_of(ledger, 4)
    now = time.time() + 1
    ledger.queue.claim("A", "w1", now, 2, LEASE)
    ledger.queue.claim("A", "w2", now, 2, LEASE)

    ledger.queue.release("w1", [ids[1], ids[2]])  # ids[2] is w2's: unchanged

    assert [d.id for d in ledger.queue.claim("A", "w3", now, 10, LEASE)] == [ids[1]]
    ledger.queue.release("w2")
    assert [d.id for d in ledger.queue.claim("A", "w4", now, 10, LEASE)] == ids[2:]


def test_a_crash_leaves_no_claim_that_blocks_a_restart(tmp_path: Path) -> None:
    """Invariant: a restart resumes every pending delivery (the claims of the workers of the
    crashed process are cleared when the dispatcher starts, before any worker runs)."""
    path = tmp_path / "ledger.sqlite3"
    before = Ledger(path)
    ids = queue_of(before, 3)
    assert len(before.queue.claim("A", "crashed-worker", time.time(), 10, 3600.0)) == 3
    before.close()  # the process dies holding its claims for an hour

    after = Ledger(path)
    try:
        assert after.queue.claim("A", "new-worker", time.time(), 10, LEASE) == []
        assert after.queue.release_all_claims() == 3
        assert [d.id for d in after.queue.claim("A", "new-worker", time.time(), 10, LEASE)] \
            == ids
    finally:
        after.close()


def test_an_outcome_ends_the_claim(ledger: Ledger) -> None:
    ids = queue_of(ledger, 2)
    now = time.time() + 1
    ledger.queue.claim("A", "w1", now, 10, LEASE)

    ledger.queue.record_outcomes([
        DeliveryOutcome(ids[0], DeliveryState.DELIVERED),
        DeliveryOutcome(ids[1], DeliveryState.PENDING, "0xA700", next_attempt_at=now),
    ])

    assert ledger.queue.claims() == {}
    assert [d.id for d in ledger.queue.claim("A", "w2", now, 10, LEASE)] == [ids[1]]


def test_a_suspect_is_claimed_only_by_the_suspect_lane_one_at_a_time(ledger: Ledger) -> None:
    ids = queue_of(ledger, 4)
    now = time.time() + 1
    ledger.queue.record_outcomes([
        DeliveryOutcome(i, DeliveryState.PENDING, "no C-STORE response within 20 s",
                        next_attempt_at=now, suspect=True) for i in ids[:2]])

    plain = ledger.queue.claim("A", "w1", now, 10, LEASE)
    lone = ledger.queue.claim("A", "lane", now, 1, LEASE, suspects=True)
    other = ledger.queue.claim("A", "lane2", now, 1, LEASE, suspects=True)

    assert [d.id for d in plain] == ids[2:]
    assert [d.id for d in lone] == [ids[0]]
    assert [d.id for d in other] == [ids[1]]
    assert ledger.queue.suspects("A") == dict.fromkeys(ids[:2],
                                                       "no C-STORE response within 20 s")
    assert ledger.queue.next_suspect_due_at("A") == now


def test_a_suspect_keeps_its_own_schedule(ledger: Ledger) -> None:
    (suspect,) = queue_of(ledger, 1)
    now = time.time()
    ledger.queue.record_outcomes([DeliveryOutcome(suspect, DeliveryState.PENDING, "silent",
                                                  next_attempt_at=now + 30, suspect=True)])

    assert ledger.queue.claim("A", "lane", now, 1, LEASE, suspects=True) == []
    assert ledger.queue.next_suspect_due_at("A") == now + 30
    assert [d.id for d in ledger.queue.claim("A", "lane", now + 31, 1, LEASE,
                                             suspects=True)] == [suspect]


def test_a_delivered_suspect_is_no_longer_suspect_and_a_failed_one_keeps_its_reason(
        ledger: Ledger) -> None:
    ids = queue_of(ledger, 2)
    now = time.time()
    ledger.queue.record_outcomes([
        DeliveryOutcome(i, DeliveryState.PENDING, "silent", next_attempt_at=now, suspect=True)
        for i in ids])

    ledger.queue.record_outcomes([
        DeliveryOutcome(ids[0], DeliveryState.DELIVERED),
        DeliveryOutcome(ids[1], DeliveryState.FAILED, "silent again", suspect=True)])

    assert ledger.queue.suspects("A") == {ids[1]: "silent again"}


def test_a_deleted_delivery_takes_its_claim_and_suspicion_with_it(ledger: Ledger) -> None:
    """A forced removal deletes the deliveries whose instance already goes to the target:
    a claim or a suspicion on them must not stand in the way (foreign keys are on)."""
    instance_id = ingest_to(ledger, ["OLD", "NEW"])
    old = delivery_rows(ledger, instance_id)["OLD"][0]
    now = time.time()
    ledger.queue.record_outcomes([DeliveryOutcome(old, DeliveryState.PENDING, "silent",
                                                  next_attempt_at=now, suspect=True)])
    ledger.queue.claim("OLD", "w1", now, 10, LEASE, suspects=True)

    ledger.moves.redirect_all("OLD", "NEW", "removed")

    assert "OLD" not in delivery_rows(ledger, instance_id)
    assert ledger.queue.claims() == {} and ledger.queue.suspects() == {}


def test_outcomes_skip_the_fsync_but_spool_removal_marks_never_do(sqlite_ledger: Ledger) -> None:
    """Invariant (durable before a file goes): an outcome may be committed without the
    WAL's fsync (lost in a power cut, it only means a second send), because the janitor's
    spool-removal mark is committed with it (making every earlier commit durable) before
    a delivered instance's file is unlinked."""
    ledger = sqlite_ledger
    instance_id = ingest_to(ledger, ["A"])
    [delivery_id] = [row[0] for row in delivery_rows(ledger, instance_id).values()]
    statements: list[str] = []
    connection = ledger.database.connection()
    connection.set_trace_callback(statements.append)
    try:
        ledger.queue.record_outcomes([DeliveryOutcome(delivery_id, DeliveryState.DELIVERED,
                                                      None)])
        outcome_statements = list(statements)
        statements.clear()
        ledger.spool_index.mark_spool_removed([instance_id])
        mark_statements = list(statements)
        synchronous = connection.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        connection.set_trace_callback(None)

    update = next(i for i, s in enumerate(outcome_statements) if s.startswith("UPDATE"))
    assert "PRAGMA synchronous=NORMAL" in outcome_statements[:update]
    assert outcome_statements[-1] == "PRAGMA synchronous=FULL"  # put back after the commit
    assert not any("synchronous=NORMAL" in s for s in mark_statements)
    assert synchronous == 2  # FULL for every other write of this connection


def test_a_node_clears_only_its_own_claims_at_start(ledger: Ledger) -> None:
    """Nodes sharing a ledger: a node starting again forgets the claims of its earlier run,
    never those of another node that is working."""
    ids = queue_of(ledger, 4)
    now = time.time() + 1
    mine = ledger.queue.claim("A", "node1/A/1/old", now, 2, LEASE)
    theirs = ledger.queue.claim("A", "node2/A/1/x", now, 2, LEASE)

    assert ledger.queue.release_claims_of_node("node1") == 2

    assert ledger.queue.claims("A") == dict.fromkeys([d.id for d in theirs], "node2/A/1/x")
    assert {d.id for d in mine} | {d.id for d in theirs} == set(ids)
    assert ledger.queue.release_claims_of_node("node_") == 0  # no wildcard in a node name


def test_a_claim_whose_lease_expired_is_taken_over_and_said_so(ledger: Ledger) -> None:
    ids = queue_of(ledger, 3)
    now = time.time() + 1
    ledger.queue.claim("A", "node1/A/1/x", now, 2, lease=1.0)  # node1 then dies
    taken: list[int] = []

    later = ledger.queue.claim("A", "node2/A/1/y", now + 5, 3, LEASE, taken_over=taken)

    assert [d.id for d in later] == ids
    assert sorted(taken) == ids[:2]  # the third was never claimed: not a take-over
    assert ledger.queue.claims("A") == dict.fromkeys(ids, "node2/A/1/y")
