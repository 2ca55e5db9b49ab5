"""The SQLite ledger: durable settings, atomic ingest, the delivery state machine."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.unitkit import delivery_rows, ingest_to, new_instance

from dde.routing.route import Route
from dde.store import schema
from dde.store.errors import LedgerError
from dde.store.intake import IngestView
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState, InvalidTransition, check_transition

PENDING, DELIVERED, FAILED = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.FAILED


def sql(ledger: Ledger, statement: str, parameters: tuple[object, ...] = ()) -> list[Any]:
    """Rows of one statement on this thread's connection (the store's own tests may look
    at rows directly)."""
    return list(ledger.database.connection().execute(statement, parameters).fetchall())


def count(ledger: Ledger, table: str) -> int:
    return int(sql(ledger, f"SELECT COUNT(*) FROM {table}")[0][0])


def state_of(ledger: Ledger, delivery_id: int) -> tuple[str, int, str | None, float]:
    row = sql(
        ledger, "SELECT state, attempts, last_error, next_attempt_at FROM deliveries WHERE id = ?",
        (delivery_id,),
    )[0]
    return str(row[0]), int(row[1]), row[2], float(row[3])


def only_delivery(ledger: Ledger, instance_id: int) -> int:
    (delivery_id,) = [row[0] for row in delivery_rows(ledger, instance_id).values()]
    return int(delivery_id)


# -- durability settings ---------------------------------------------------------------
def test_wal_and_synchronous_full_on_every_connection(sqlite_ledger: Ledger) -> None:
    ledger = sqlite_ledger
    seen: dict[str, object] = {}

    def other_thread() -> None:
        seen["journal"] = sql(ledger, "PRAGMA journal_mode")[0][0]
        seen["synchronous"] = sql(ledger, "PRAGMA synchronous")[0][0]

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)

    assert sql(ledger, "PRAGMA journal_mode")[0][0] == "wal"
    assert sql(ledger, "PRAGMA synchronous")[0][0] == 2  # FULL
    assert seen == {"journal": "wal", "synchronous": 2}


def test_wal_mode_is_persisted_in_the_database_file(sqlite_ledger: Ledger) -> None:
    ledger = sqlite_ledger
    ingest_to(ledger, ["A"])

    header = ledger.path.read_bytes()[:20]
    # SQLite file header: bytes 18 and 19 (write/read format versions) are 2 in WAL mode.
    assert header[:16] == b"SQLite format 3\x00"
    assert (header[18], header[19]) == (2, 2)
    with sqlite3.connect(ledger.path) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_ledger_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "dde.sqlite3"
    path.write_bytes(b"this is not a database" * 100)

    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger(path)


def test_an_older_ledger_is_migrated_once_and_keeps_its_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dde.sqlite3"
    old = Ledger(path)
    ingest_to(old, ["A"], sop_instance_uid="1.2.3")
    old.close()
    steps: list[int] = []

    def add_note_column(connection: sqlite3.Connection) -> None:
        steps.append(2)
        connection.execute("ALTER TABLE instances ADD COLUMN note TEXT")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(schema, "MIGRATIONS", {2: add_note_column})

    for _ in range(2):  # the second open finds it up to date
        ledger = Ledger(path)
        assert [r.sop_instance_uid for r in ledger.operators.where("1.2.3")] == ["1.2.3"]
        ledger.close()
    assert steps == [2]
    with sqlite3.connect(path) as plain:
        assert plain.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
        assert "note" in [c[1] for c in plain.execute("PRAGMA table_info(instances)")]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dde.sqlite3"
    Ledger(path).close()
    with sqlite3.connect(path) as plain:
        plain.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")

    with pytest.raises(LedgerError, match="newer"):
        Ledger(path)


# -- ingest ------------------------------------------------------------------------------
def test_ingest_writes_instance_deliveries_and_pin_together(ledger: Ledger) -> None:
    instance = new_instance("aa/bb.dcm", study_instance_uid="1.2.3")
    route = Route("default", ("ORTHANC1",), ("ORTHANC-PROBE",), ("1.2.3", "ORTHANC1", "storage"))

    instance_id, returned = ledger.intake.ingest(instance, lambda view: route)

    assert returned == route
    (record,) = ledger.operators.where(instance.sop_instance_uid)
    assert record.id == instance_id
    assert record.spool_path == "aa/bb.dcm"
    assert record.rule == "default"
    assert [(d.endpoint, d.role, d.state, d.attempts) for d in record.deliveries] == [
        ("ORTHANC1", "route", "pending", 0), ("ORTHANC-PROBE", "mirror", "pending", 0),
    ]
    assert sql(ledger, "SELECT study_instance_uid, endpoint, grp FROM study_pins") == [
        ("1.2.3", "ORTHANC1", "storage")
    ]


def test_decide_reads_pins_and_queue_inside_the_transaction(ledger: Ledger) -> None:
    ingest_to(ledger, ["ORTHANC1"], ["PROBE"], pin=("1.2.3", "ORTHANC1", "storage"))
    seen: dict[str, object] = {}

    def decide(view: IngestView) -> Route:
        seen["pin"] = view.pin_for("1.2.3")
        seen["other"] = view.pin_for("9.9.9")
        seen["queued"] = view.queued_counts()
        return Route("default", ("ORTHANC1",))

    ledger.intake.ingest(new_instance(), decide)

    assert seen == {"pin": "ORTHANC1", "other": None, "queued": {"ORTHANC1": 1, "PROBE": 1}}


def test_if_decide_raises_nothing_is_written(ledger: Ledger) -> None:
    def decide(view: IngestView) -> Route:
        raise RuntimeError("no route")

    with pytest.raises(RuntimeError):
        ledger.intake.ingest(new_instance(), decide)

    assert [count(ledger, t) for t in ("instances", "deliveries", "study_pins")] == [0, 0, 0]


def test_a_failing_row_rolls_back_the_pin_written_before_it(ledger: Ledger) -> None:
    bad = dataclasses.replace(new_instance(), calling_aet=None)  # type: ignore[arg-type]
    route = Route("default", ("A",), (), ("1.2.3", "A", "storage"))

    with pytest.raises(LedgerError, match="(?i)not[- ]null"):
        ledger.intake.ingest(bad, lambda view: route)

    assert [count(ledger, t) for t in ("instances", "deliveries", "study_pins")] == [0, 0, 0]
    # The ledger is still usable afterwards.
    ingest_to(ledger, ["A"])
    assert count(ledger, "instances") == 1


def test_concurrent_ingests_are_serialised_so_decide_sees_the_others_rows(
        ledger: Ledger) -> None:
    first_deciding = threading.Event()
    second_decided = threading.Event()
    seen: dict[str, dict[str, int]] = {}

    def first(view: IngestView) -> Route:
        first_deciding.set()
        # The second ingest must not get to decide while this transaction is open; give it
        # a fair chance to (wrongly) do so before committing.
        second_decided.wait(0.3)
        return Route("default", ("A",))

    def second(view: IngestView) -> Route:
        seen["queued"] = view.queued_counts()
        second_decided.set()
        return Route("default", ("B",))

    one = threading.Thread(target=lambda: ledger.intake.ingest(new_instance(), first))
    one.start()
    assert first_deciding.wait(10)
    two = threading.Thread(target=lambda: ledger.intake.ingest(new_instance(), second))
    two.start()
    one.join(10)
    two.join(10)

    assert seen["queued"] == {"A": 1}
    assert ledger.queue.queued_counts() == {"A": 1, "B": 1}


def test_same_sop_instance_received_twice_keeps_both_receptions(ledger: Ledger) -> None:
    ingest_to(ledger, ["A"], sop_instance_uid="1.2.3.4.5.6")
    ingest_to(ledger, ["B"], sop_instance_uid="1.2.3.4.5.6")

    records = ledger.operators.where("1.2.3.4.5.6")

    assert [[d.endpoint for d in r.deliveries] for r in records] == [["A"], ["B"]]


# -- the queue ---------------------------------------------------------------------------
def test_due_returns_pending_due_deliveries_of_one_endpoint_oldest_first(
        ledger: Ledger) -> None:
    now = time.time()
    late = ingest_to(ledger, ["A"], received_at=now - 10)
    early = ingest_to(ledger, ["A", "B"], received_at=now - 20)
    same_time_later_id = ingest_to(ledger, ["A"], received_at=now - 10)
    future = ingest_to(ledger, ["A"], received_at=now + 3600)

    due = ledger.queue.due("A", now, limit=10)

    assert [d.instance_id for d in due] == [early, late, same_time_later_id]
    assert future not in [d.instance_id for d in due]
    assert all(d.endpoint == "A" and d.attempts == 0 for d in due)
    assert due[0].spool_path == "ab/cd.dcm"
    assert due[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert due[0].transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert [d.instance_id for d in ledger.queue.due("A", now, limit=2)] == [early, late]
    assert [d.instance_id for d in ledger.queue.due("B", now, limit=10)] == [early]
    assert ledger.queue.next_due_at("A") == pytest.approx(now - 20)
    assert ledger.queue.next_due_at("nobody") is None


def test_due_follows_next_attempt_at_of_outcomes(ledger: Ledger) -> None:
    now = time.time()
    first = ingest_to(ledger, ["A"], received_at=now - 5)
    second = ingest_to(ledger, ["A"], received_at=now - 4)
    first_delivery = only_delivery(ledger, first)

    ledger.queue.record_outcomes([DeliveryOutcome(first_delivery, PENDING, "busy",
                                            next_attempt_at=now + 60)], now=now)

    assert [d.instance_id for d in ledger.queue.due("A", now, 10)] == [second]
    assert [d.instance_id for d in ledger.queue.due("A", now + 61, 10)] == [second, first]
    assert ledger.queue.due("A", now + 61, 10)[1].attempts == 1
    assert ledger.queue.next_due_at("A") == pytest.approx(now - 4)


def test_delivered_and_failed_are_never_due(ledger: Ledger) -> None:
    a = only_delivery(ledger, ingest_to(ledger, ["A"]))
    b = only_delivery(ledger, ingest_to(ledger, ["A"]))

    ledger.queue.record_outcomes([DeliveryOutcome(a, DELIVERED), DeliveryOutcome(b, FAILED, "no")])

    assert ledger.queue.due("A", time.time() + 1e6, 10) == []
    assert ledger.queue.next_due_at("A") is None
    assert ledger.queue.queued_counts() == {}


# -- outcomes and the state machine --------------------------------------------------------
@pytest.mark.parametrize(("old", "new", "allowed"), [
    (PENDING, PENDING, True), (PENDING, DELIVERED, True), (PENDING, FAILED, True),
    (FAILED, PENDING, True), (FAILED, DELIVERED, False), (FAILED, FAILED, False),
    (DELIVERED, PENDING, False), (DELIVERED, FAILED, False), (DELIVERED, DELIVERED, False),
])
def test_check_transition(old: DeliveryState, new: DeliveryState, allowed: bool) -> None:
    if allowed:
        check_transition(old, new)
    else:
        with pytest.raises(InvalidTransition, match=f"from {old} to {new}"):
            check_transition(old, new)


def test_pending_to_delivered(ledger: Ledger) -> None:
    delivery = only_delivery(ledger, ingest_to(ledger, ["A"]))

    ledger.queue.record_outcomes([DeliveryOutcome(delivery, DELIVERED)], now=1234.5)

    state, attempts, error, _ = state_of(ledger, delivery)
    assert (state, attempts, error) == ("delivered", 1, None)
    assert sql(ledger, "SELECT delivered_at FROM deliveries WHERE id = ?",
               (delivery,)) == [(1234.5,)]


def test_pending_to_failed_keeps_the_reason(ledger: Ledger) -> None:
    delivery = only_delivery(ledger, ingest_to(ledger, ["A"]))

    ledger.queue.record_outcomes([DeliveryOutcome(delivery, FAILED, "SOP class not supported")])

    assert state_of(ledger, delivery)[:3] == ("failed", 1, "SOP class not supported")


def test_pending_rescheduled_spends_an_attempt(ledger: Ledger) -> None:
    delivery = only_delivery(ledger, ingest_to(ledger, ["A"]))

    ledger.queue.record_outcomes([DeliveryOutcome(delivery, PENDING, "busy", next_attempt_at=99.0)])
    ledger.queue.record_outcomes([DeliveryOutcome(delivery, PENDING, "busy again",
                                            next_attempt_at=199.0)])

    assert state_of(ledger, delivery) == ("pending", 2, "busy again", 199.0)


def test_outcome_that_does_not_count_as_an_attempt(ledger: Ledger) -> None:
    delivery = only_delivery(ledger, ingest_to(ledger, ["A"]))

    ledger.queue.record_outcomes([DeliveryOutcome(delivery, PENDING, "down",
                                                  counts_as_attempt=False, next_attempt_at=50.0)])

    assert state_of(ledger, delivery) == ("pending", 0, "down", 50.0)


def test_failed_to_pending_by_an_operator_retry(ledger: Ledger) -> None:
    delivery = only_delivery(ledger, ingest_to(ledger, ["A"]))
    ledger.queue.record_outcomes([DeliveryOutcome(delivery, FAILED, "refused")])
    before = time.time()

    assert ledger.operators.retry(delivery) is FAILED

    state, attempts, _, next_attempt_at = state_of(ledger, delivery)
    assert (state, attempts) == ("pending", 0)
    assert before <= next_attempt_at <= time.time()
    assert [d.id for d in ledger.queue.due("A", time.time(), 10)] == [delivery]


def test_a_late_outcome_for_a_delivered_delivery_changes_nothing(ledger: Ledger) -> None:
    """Delivered is final: a duplicate or stale outcome is ignored, the rest of the batch is
    still written (a stale worker must not roll back another's results)."""
    delivered = only_delivery(ledger, ingest_to(ledger, ["A"]))
    other = only_delivery(ledger, ingest_to(ledger, ["A"]))
    ledger.queue.record_outcomes([DeliveryOutcome(delivered, DELIVERED)])

    ledger.queue.record_outcomes([DeliveryOutcome(other, DELIVERED),
                            DeliveryOutcome(delivered, PENDING, "again")])

    assert state_of(ledger, delivered)[:3] == ("delivered", 1, None)
    assert state_of(ledger, other)[:2] == ("delivered", 1)


def test_failed_to_delivered_is_refused_and_nothing_of_the_batch_is_written(
        ledger: Ledger) -> None:
    failed = only_delivery(ledger, ingest_to(ledger, ["A"]))
    other = only_delivery(ledger, ingest_to(ledger, ["A"]))
    ledger.queue.record_outcomes([DeliveryOutcome(failed, FAILED, "refused")])

    with pytest.raises(InvalidTransition):
        ledger.queue.record_outcomes([DeliveryOutcome(other, DELIVERED),
                                DeliveryOutcome(failed, DELIVERED)])

    assert state_of(ledger, failed)[0] == "failed"
    assert state_of(ledger, other)[:2] == ("pending", 0)


def test_outcome_of_an_unknown_delivery_is_ignored(ledger: Ledger) -> None:
    delivery = only_delivery(ledger, ingest_to(ledger, ["A"]))

    ledger.queue.record_outcomes([DeliveryOutcome(9999, DELIVERED), DeliveryOutcome(delivery,
                                                                              DELIVERED)])

    assert state_of(ledger, delivery)[0] == "delivered"


def test_note_error_does_not_spend_attempts_nor_touch_settled_deliveries(
        ledger: Ledger) -> None:
    waiting = only_delivery(ledger, ingest_to(ledger, ["A"]))
    done = only_delivery(ledger, ingest_to(ledger, ["A"]))
    ledger.queue.record_outcomes([DeliveryOutcome(done, DELIVERED)])
    _, _, _, due_before = state_of(ledger, waiting)

    ledger.queue.note_error([waiting, done], "association rejected")

    assert state_of(ledger, waiting) == ("pending", 0, "association rejected", due_before)
    assert state_of(ledger, done)[:3] == ("delivered", 1, None)
    ledger.queue.note_error([], "nothing")  # no ids: no-op


# -- the spool janitor's view ----------------------------------------------------------
def test_spool_file_is_releasable_only_when_every_delivery_is_delivered(
        ledger: Ledger) -> None:
    instance = ingest_to(ledger, ["A"], ["PROBE"], spool_path="aa/one.dcm")
    rows = delivery_rows(ledger, instance)
    far_future = time.time() + 3600

    ledger.queue.record_outcomes([DeliveryOutcome(rows["A"][0], DELIVERED)])
    assert ledger.spool_index.releasable_spool_files(far_future) == []

    ledger.queue.record_outcomes([DeliveryOutcome(rows["PROBE"][0], FAILED, "refused")])
    assert ledger.spool_index.releasable_spool_files(far_future) == []

    ledger.operators.retry(rows["PROBE"][0])
    ledger.queue.record_outcomes([DeliveryOutcome(rows["PROBE"][0], DELIVERED)])
    assert ledger.spool_index.releasable_spool_files(far_future) == [(instance, "aa/one.dcm")]


def test_releasable_respects_retention(ledger: Ledger) -> None:
    instance = ingest_to(ledger, ["A"], spool_path="aa/kept.dcm")
    ledger.queue.record_outcomes([DeliveryOutcome(only_delivery(ledger, instance), DELIVERED)],
                           now=1000.0)

    assert ledger.spool_index.releasable_spool_files(older_than=999.0) == []
    assert ledger.spool_index.releasable_spool_files(older_than=1000.0) == [
        (instance, "aa/kept.dcm")]


def test_mark_spool_removed_takes_the_file_out_of_use(ledger: Ledger) -> None:
    gone = ingest_to(ledger, ["A"], spool_path="aa/gone.dcm")
    ingest_to(ledger, ["A"], spool_path="aa/kept.dcm")
    ledger.queue.record_outcomes([DeliveryOutcome(only_delivery(ledger, gone), DELIVERED)])

    ledger.spool_index.mark_spool_removed([gone])

    assert ledger.spool_index.releasable_spool_files(time.time() + 60) == []
    assert ledger.spool_index.spool_paths_in_use() == {"aa/kept.dcm"}
    assert sql(ledger, "SELECT spool_removed_at IS NOT NULL FROM instances WHERE id = ?",
               (gone,)) == [(1,)]


# -- operators -----------------------------------------------------------------------------
def test_search_by_patient_and_accession_uses_an_index(sqlite_ledger: Ledger) -> None:
    ledger = sqlite_ledger
    plan = sql(ledger, "EXPLAIN QUERY PLAN SELECT id FROM instances"
                       " WHERE patient_id = ? AND accession_number = ?", ("P", "A"))
    assert any("USING INDEX" in str(row) for row in plan), plan


def test_retry_of_a_pending_delivery_makes_it_due_now(ledger: Ledger) -> None:
    delivery = only_delivery(ledger, ingest_to(ledger, ["A"]))
    ledger.queue.record_outcomes([DeliveryOutcome(delivery, PENDING, "busy",
                                            next_attempt_at=time.time() + 3600)])

    assert ledger.operators.retry(delivery) is PENDING

    assert state_of(ledger, delivery)[:2] == ("pending", 1)  # attempts are kept
    assert [d.id for d in ledger.queue.due("A", time.time(), 10)] == [delivery]


def test_retry_of_a_delivered_or_unknown_delivery_changes_nothing(ledger: Ledger) -> None:
    delivery = only_delivery(ledger, ingest_to(ledger, ["A"]))
    ledger.queue.record_outcomes([DeliveryOutcome(delivery, DELIVERED)])

    assert ledger.operators.retry(delivery) is DELIVERED
    assert ledger.operators.retry(424242) is None
    assert state_of(ledger, delivery)[:2] == ("delivered", 1)


def test_retry_failed_requeues_every_failed_delivery(ledger: Ledger) -> None:
    failed = [only_delivery(ledger, ingest_to(ledger, ["A"])) for _ in range(3)]
    delivered = only_delivery(ledger, ingest_to(ledger, ["A"]))
    ledger.queue.record_outcomes([DeliveryOutcome(d, FAILED, "x") for d in failed]
                           + [DeliveryOutcome(delivered, DELIVERED)])

    assert ledger.operators.retry_failed() == 3

    assert [state_of(ledger, d)[:2] for d in failed] == [("pending", 0)] * 3
    assert state_of(ledger, delivered)[0] == "delivered"
    assert ledger.operators.retry_failed() == 0


def test_where_tells_every_delivery_of_an_instance(ledger: Ledger) -> None:
    instance = new_instance("aa/where.dcm", sop_instance_uid="1.2.826.0.1.99")
    ledger.intake.ingest(instance, lambda view: Route("default", ("ORTHANC2",), ("PROBE",)))
    rows = {r.endpoint: r for r in ledger.operators.where("1.2.826.0.1.99")[0].deliveries}
    ledger.queue.record_outcomes([DeliveryOutcome(rows["PROBE"].id, FAILED, "refused")])

    (record,) = ledger.operators.where("1.2.826.0.1.99")

    assert record.sop_instance_uid == "1.2.826.0.1.99"
    assert (record.calling_aet, record.called_aet) == ("TEST_SCU", "DYNAMIC_DICOM_MW")
    assert record.study_instance_uid == instance.study_instance_uid
    assert record.size == instance.size
    assert [(d.endpoint, d.role, d.state, d.last_error) for d in record.deliveries] == [
        ("ORTHANC2", "route", "pending", None), ("PROBE", "mirror", "failed", "refused"),
    ]
    assert ledger.operators.where("1.2.3.nothing") == []


def test_queue_and_counts(ledger: Ledger) -> None:
    a = ingest_to(ledger, ["A"], ["P"], sop_instance_uid="1.1")
    rows = delivery_rows(ledger, a)
    ledger.queue.record_outcomes([DeliveryOutcome(rows["A"][0], DELIVERED),
                            DeliveryOutcome(rows["P"][0], FAILED, "refused")])
    ingest_to(ledger, ["B"], sop_instance_uid="2.2")

    entries = ledger.operators.queue()

    assert [(e.endpoint, e.state, e.sop_instance_uid) for e in entries] == [
        ("P", "failed", "1.1"), ("B", "pending", "2.2"),
    ]
    assert [e.endpoint for e in ledger.operators.queue([PENDING])] == ["B"]
    assert ledger.operators.state_counts() == {"A": {"delivered": 1}, "P": {"failed": 1},
                                     "B": {"pending": 1}}
    assert ledger.queue.queued_counts() == {"B": 1}


def test_a_second_ledger_on_the_same_file_sees_everything(tmp_path: Path) -> None:
    path = tmp_path / "dde.sqlite3"
    first = Ledger(path)
    done = ingest_to(first, ["A"], pin=("1.2.3", "A", "storage"), sop_instance_uid="5.5")
    ingest_to(first, ["A"], sop_instance_uid="6.6")
    first.queue.record_outcomes([DeliveryOutcome(only_delivery(first, done), DELIVERED)])
    first.close()

    second = Ledger(path)
    try:
        assert second.operators.where("5.5")[0].deliveries[0].state == "delivered"
        assert [d.sop_instance_uid for d in second.queue.due("A", time.time(), 10)] == ["6.6"]
        seen: dict[str, str | None] = {}

        def decide(view: IngestView) -> Route:
            seen["pin"] = view.pin_for("1.2.3")
            return Route("default", ("A",))

        second.intake.ingest(new_instance(), decide)
        assert seen["pin"] == "A"
    finally:
        second.close()


def test_two_open_ledgers_see_each_others_commits(tmp_path: Path) -> None:
    path = tmp_path / "dde.sqlite3"
    writer, reader = Ledger(path), Ledger(path)
    try:
        ingest_to(writer, ["A"], sop_instance_uid="7.7")
        assert [r.sop_instance_uid for r in reader.operators.where("7.7")] == ["7.7"]
    finally:
        writer.close()
        reader.close()


# -- the spool janitor's questions -----------------------------------------------------
def test_releasable_since_finds_what_changed_and_not_the_old_backlog(ledger: Ledger) -> None:
    backlog = [ingest_to(ledger, ["DOWN"], spool_path=f"b/{n}.dcm", received_at=100.0)
               for n in range(3)]
    done = ingest_to(ledger, ["A", "B"], spool_path="d/done.dcm", received_at=100.0)
    half = ingest_to(ledger, ["A", "B"], spool_path="d/half.dcm", received_at=100.0)
    discarded = ingest_to(ledger, [], spool_path="d/discarded.dcm", received_at=300.0)
    rows = delivery_rows(ledger, done)
    ledger.queue.record_outcomes([DeliveryOutcome(rows["A"][0], DELIVERED),
                            DeliveryOutcome(rows["B"][0], DELIVERED)], now=250.0)
    ledger.queue.record_outcomes([DeliveryOutcome(delivery_rows(ledger, half)["A"][0], DELIVERED)],
                           now=250.0)

    everything = ledger.spool_index.releasable_spool_files(older_than=400.0)
    assert sorted(everything) == sorted([(done, "d/done.dcm"), (discarded, "d/discarded.dcm")])
    # Since 200: the delivery made at 250 - never the backlog (nor the instance without any
    # delivery: the receiver removes a discarded instance's file itself).
    assert ledger.spool_index.releasable_spool_files(400.0, since=200.0) == [(done, "d/done.dcm")]
    assert ledger.spool_index.releasable_spool_files(400.0, since=350.0) == []
    # The half-delivered instance becomes releasable when its last delivery is made.
    ledger.queue.record_outcomes([DeliveryOutcome(delivery_rows(ledger, half)["B"][0], DELIVERED)],
                           now=380.0)
    assert ledger.spool_index.releasable_spool_files(400.0, since=350.0) == [(half, "d/half.dcm")]
    assert ledger.spool_index.releasable_spool_files(370.0, since=350.0) == []  # not old enough yet
    assert not {i for i, _ in ledger.spool_index.releasable_spool_files(400.0)} & set(backlog)


def test_opening_an_existing_ledger_opens_no_descriptor_of_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Closing any descriptor of a database file drops every POSIX lock the process holds on
    # it (the other connections' too): SQLite's documented way to corrupt a database.
    path = tmp_path / "dde.sqlite3"
    first = Ledger(path)
    opened: list[str] = []
    real_open = os.open

    def watching_open(file: Any, flags: int, *args: Any) -> int:
        opened.append(str(file))
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", watching_open)
    second = Ledger(path)
    try:
        assert str(path) not in opened
    finally:
        second.close()
        first.close()
