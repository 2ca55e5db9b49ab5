"""The ledger's diagnostics repository: each question against the rows it reads (the store's
own tests may look at rows directly), and the tools for fault tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tests.support.unitkit import ingest_to, new_instance

from dde.store.diagnostics import COUNTED_TABLES, backend_error, hold_exclusive_lock
from dde.store.errors import LedgerError, LedgerLocked
from dde.store.ledger import Ledger
from dde.store.records import (
    DeliveryOutcome,
    SeedDelivery,
    SeedInstance,
    StoredDelivery,
    StoredInstance,
    StudyPin,
)
from dde.store.states import DeliveryState


def sql(ledger: Ledger, statement: str, parameters: tuple[object, ...] = ()) -> list[Any]:
    return list(ledger.database.connection().execute(statement, parameters).fetchall())


def three_instances(ledger: Ledger) -> tuple[int, int, int]:
    """One delivered to A (+ mirror M), one failed to A, one pending to B pinned to B."""
    first = ingest_to(ledger, ["A"], ["M"], study_instance_uid="1.1", sop_instance_uid="9.1",
                      received_at=1000.0, patient_id="P1")
    second = ingest_to(ledger, ["A"], study_instance_uid="1.1", sop_instance_uid="9.2",
                       received_at=1001.0)
    third = ingest_to(ledger, ["B"], study_instance_uid="1.2", sop_instance_uid="9.3",
                      received_at=1002.0, pin=("1.2", "B", "storage"))
    ids = {d.endpoint + str(d.instance_id): d.id for d in ledger.diagnostics.deliveries()}
    ledger.queue.record_outcomes([
        DeliveryOutcome(ids[f"A{first}"], DeliveryState.DELIVERED),
        DeliveryOutcome(ids[f"M{first}"], DeliveryState.DELIVERED),
        DeliveryOutcome(ids[f"A{second}"], DeliveryState.FAILED, "refused"),
    ], now=2000.0)
    return first, second, third


# -- counts --------------------------------------------------------------------------------
def test_count_each_table(ledger: Ledger) -> None:
    assert {t: ledger.diagnostics.count(t) for t in COUNTED_TABLES} == {
        "instances": 0, "deliveries": 0, "study_pins": 0, "events": 0, "instance_variants": 0}
    three_instances(ledger)
    ledger.event_log.add_event("note", "A", "a note")

    counted = {t: ledger.diagnostics.count(t) for t in COUNTED_TABLES}

    assert counted == {t: int(sql(ledger, f"SELECT COUNT(*) FROM {t}")[0][0])
                       for t in COUNTED_TABLES}
    assert counted == {"instances": 3, "deliveries": 4, "study_pins": 1, "events": 1,
                       "instance_variants": 0}


@pytest.mark.parametrize("name", ["meta", "endpoint_status", "instances; DROP TABLE meta",
                                  "instances WHERE 1", "INSTANCES", ""])
def test_count_refuses_any_other_name(ledger: Ledger, name: str) -> None:
    with pytest.raises(ValueError, match="cannot count"):
        ledger.diagnostics.count(name)
    assert sql(ledger, "SELECT COUNT(*) FROM meta")[0][0] >= 1  # nothing ran


# -- instances -----------------------------------------------------------------------------
def test_instances_in_id_order_after_an_id(ledger: Ledger) -> None:
    first, second, third = three_instances(ledger)

    found = ledger.diagnostics.instances()

    assert [i.id for i in found] == [first, second, third]
    assert found[0] == StoredInstance(
        first, "9.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "1.1", "1.2.3.4.5",
        "P1", "ACC1", "CT", "TEST_SCU", "DYNAMIC_DICOM_MW", "127.0.0.1", "default", 100,
        "ab/cd.dcm", 1000.0, None)
    assert [i.sop_instance_uid for i in ledger.diagnostics.instances(after_id=first)] == [
        "9.2", "9.3"]
    assert ledger.diagnostics.instances(after_id=third) == []


def test_max_instance_id(ledger: Ledger) -> None:
    assert ledger.diagnostics.max_instance_id() == 0
    *_, third = three_instances(ledger)
    assert ledger.diagnostics.max_instance_id() == third


def test_sop_instance_uids(ledger: Ledger) -> None:
    assert ledger.diagnostics.sop_instance_uids() == set()
    three_instances(ledger)
    assert ledger.diagnostics.sop_instance_uids() == {"9.1", "9.2", "9.3"}


# -- deliveries ----------------------------------------------------------------------------
def test_deliveries_are_the_rows_with_their_instance_uid(ledger: Ledger) -> None:
    first, second, third = three_instances(ledger)

    found = ledger.diagnostics.deliveries()

    rows = sql(ledger, "SELECT id, instance_id, endpoint, role, state, attempts, last_error,"
                       " next_attempt_at, created_at, updated_at, delivered_at FROM deliveries"
                       " ORDER BY id")
    uids = {first: "9.1", second: "9.2", third: "9.3"}
    assert found == [StoredDelivery(r[0], r[1], uids[r[1]], *r[2:]) for r in rows]
    assert [(d.endpoint, d.role, d.state, d.delivered_at) for d in found] == [
        ("A", "route", "delivered", 2000.0), ("M", "mirror", "delivered", 2000.0),
        ("A", "route", "failed", None), ("B", "route", "pending", None)]
    assert found[2].last_error == "refused" and found[2].attempts == 1


def test_deliveries_filtered_by_every_criterion_given(ledger: Ledger) -> None:
    first, second, third = three_instances(ledger)
    diagnostics = ledger.diagnostics

    def keys(found: list[StoredDelivery]) -> list[tuple[int, str]]:
        return [(d.instance_id, d.endpoint) for d in found]

    assert keys(diagnostics.deliveries(endpoint="A")) == [(first, "A"), (second, "A")]
    assert keys(diagnostics.deliveries(state="pending")) == [(third, "B")]
    assert keys(diagnostics.deliveries(instance_id=first)) == [(first, "A"), (first, "M")]
    assert keys(diagnostics.deliveries(sop_instance_uid="9.2")) == [(second, "A")]
    assert keys(diagnostics.deliveries(endpoint="A", state="failed")) == [(second, "A")]
    assert diagnostics.deliveries(endpoint="A", instance_id=third) == []
    assert diagnostics.deliveries(endpoint="A' OR '1'='1") == []


def test_delivery_states(ledger: Ledger) -> None:
    assert ledger.diagnostics.delivery_states() == {}
    three_instances(ledger)
    assert ledger.diagnostics.delivery_states() == {"delivered": 2, "failed": 1, "pending": 1}


# -- pins ----------------------------------------------------------------------------------
def test_pins(ledger: Ledger) -> None:
    assert ledger.diagnostics.pins() == []
    ingest_to(ledger, ["A"], pin=("1.9", "A", "storage"), received_at=5.0)
    ingest_to(ledger, ["B"], pin=("1.8", "B", "storage"), received_at=6.0)
    ingest_to(ledger, ["C"], pin=("1.9", "C", "archive"), received_at=7.0)

    assert ledger.diagnostics.pins() == [
        StudyPin("1.8", "storage", "B", 6.0), StudyPin("1.9", "archive", "C", 7.0),
        StudyPin("1.9", "storage", "A", 5.0)]


# -- readiness -----------------------------------------------------------------------------
def test_ping_answers_and_a_failure_is_a_ledger_error(sqlite_ledger: Ledger,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = sqlite_ledger
    ledger.diagnostics.ping()

    class Broken:
        def execute(self, *args: object) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ledger.database, "connection", lambda: Broken())
    with pytest.raises(LedgerError, match="disk I/O error"):
        ledger.diagnostics.ping()


# -- seed (for tests and benchmarks) ---------------------------------------------------------
def test_seed_writes_a_history_in_one_go(ledger: Ledger) -> None:
    before = ingest_to(ledger, ["A"])
    pending = SeedInstance(new_instance("x/1.dcm", sop_instance_uid="8.1", received_at=100.0),
                           "backlog", (SeedDelivery("B"),))
    history = SeedInstance(
        new_instance("x/2.dcm", sop_instance_uid="8.2", received_at=200.0), "default",
        (SeedDelivery("A", "route", DeliveryState.FAILED, 5, "0xA700", 210.0, 201.0, 230.0),
         SeedDelivery("M", "mirror", DeliveryState.DELIVERED, 1, None, 200.0, 200.0, 200.3,
                      200.3)),
        spool_removed_at=205.0)

    assert ledger.diagnostics.seed([pending, history]) == 2

    first, second = ledger.diagnostics.instances(after_id=before)
    assert (first.id, second.id) == (before + 1, before + 2)
    assert ingest_to(ledger, ["A"]) == before + 3  # the next id follows the seeded ones
    assert (first.sop_instance_uid, first.rule, first.spool_path, first.spool_removed_at) == (
        "8.1", "backlog", "x/1.dcm", None)
    assert (second.rule, second.spool_path, second.spool_removed_at) == ("default", None, 205.0)
    assert [(d.endpoint, d.role, d.state, d.attempts, d.last_error, d.next_attempt_at,
             d.created_at, d.updated_at, d.delivered_at)
            for d in ledger.diagnostics.deliveries(sop_instance_uid="8.1")] == [
        ("B", "route", "pending", 0, None, 100.0, 100.0, 100.0, None)]
    assert [(d.endpoint, d.role, d.state, d.attempts, d.last_error, d.next_attempt_at,
             d.created_at, d.updated_at, d.delivered_at)
            for d in ledger.diagnostics.deliveries(instance_id=second.id)] == [
        ("A", "route", "failed", 5, "0xA700", 210.0, 201.0, 230.0, None),
        ("M", "mirror", "delivered", 1, None, 200.0, 200.0, 200.3, 200.3)]
    assert ledger.diagnostics.pins() == []
    assert [d.id for d in ledger.queue.due("B", 150.0, 10)] == [
        ledger.diagnostics.deliveries(endpoint="B")[0].id]


def test_seed_is_one_transaction(ledger: Ledger) -> None:
    good = SeedInstance(new_instance(), "default", (SeedDelivery("A"),))
    bad = SeedInstance(new_instance(), "default", (SeedDelivery("A", role="copy"),))

    with pytest.raises(LedgerError):
        ledger.diagnostics.seed([good, bad])

    assert ledger.diagnostics.count("instances") == 0
    assert ledger.diagnostics.count("deliveries") == 0


# -- tools for fault tests -------------------------------------------------------------------
def test_checkpoint_empties_the_write_ahead_log(sqlite_ledger: Ledger) -> None:
    ledger = sqlite_ledger
    ingest_to(ledger, ["A"])
    wal = Path(f"{ledger.path}-wal")
    assert wal.stat().st_size > 0

    ledger.diagnostics.checkpoint()

    assert wal.stat().st_size == 0
    with sqlite3.connect(ledger.path) as plain:
        assert plain.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1


def test_hold_exclusive_lock_keeps_other_openers_out_until_the_block_ends(
        tmp_path: Path) -> None:
    path = tmp_path / "dde.sqlite3"
    ingest_to(first := Ledger(path), ["A"])
    first.close()

    with hold_exclusive_lock(path), pytest.raises(LedgerLocked):
        Ledger(path, open_timeout=0.2)

    again = Ledger(path, open_timeout=0.2)
    try:
        assert again.diagnostics.count("instances") == 1  # nothing written, nothing lost
    finally:
        again.close()


def test_backend_error_is_what_the_database_raises() -> None:
    error = backend_error("database is locked")
    assert isinstance(error, sqlite3.OperationalError)
    assert str(error) == "database is locked"
