"""What only the PostgreSQL backend has: its durability settings, its statement translation,
its plans, and a server that goes away and comes back. (Every other store test runs on both
backends through the ``ledger`` fixture.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.postgres import PostgresServer, remove_postgres, start_postgres
from tests.support.unitkit import delivery_rows, ingest_to

from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.postgres import PgConnection, display_url, translate
from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState


@pytest.fixture
def pg_ledger(postgres_server: PostgresServer) -> Iterator[Ledger]:
    url = postgres_server.create_database()
    book = Ledger(url=url)
    yield book
    book.close()
    postgres_server.drop_database(url)


def test_placeholders_are_translated_and_percent_signs_kept() -> None:
    assert translate("SELECT ? WHERE a LIKE '5%' AND b = ?") == (
        "SELECT %s WHERE a LIKE '5%%' AND b = %s")


def test_a_password_never_shows_in_the_ledgers_name() -> None:
    shown = display_url("postgresql://dde:s3cret@db.example:5432/dde")

    assert "s3cret" not in shown and shown == "postgresql://dde:***@db.example:5432/dde"
    assert display_url("postgresql://dde@db/dde") == "postgresql://dde@db/dde"


def statements_of(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement this thread's connection executes from now on."""
    seen: list[str] = []
    real, real_many = PgConnection.execute, PgConnection.executemany

    def execute(self: PgConnection, statement: str, parameters: Any = ()) -> Any:
        seen.append(statement)
        return real(self, statement, parameters)

    def executemany(self: PgConnection, statement: str, rows: Any) -> Any:
        seen.append(statement)
        return real_many(self, statement, rows)

    monkeypatch.setattr(PgConnection, "execute", execute)
    monkeypatch.setattr(PgConnection, "executemany", executemany)
    return seen


def test_outcomes_skip_the_synchronous_commit_but_spool_removal_marks_never_do(
        pg_ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant (durable before a file goes), as on SQLite: an outcome may commit without
    waiting for the WAL flush; the janitor's spool-removal mark waits for it, and flushing
    its commit record flushes every earlier one (PostgreSQL's WAL is written in order)."""
    instance_id = ingest_to(pg_ledger, ["A"])
    [delivery_id] = [row[0] for row in delivery_rows(pg_ledger, instance_id).values()]
    statements = statements_of(pg_ledger, monkeypatch)

    pg_ledger.queue.record_outcomes([DeliveryOutcome(delivery_id, DeliveryState.DELIVERED,
                                                     None)])
    outcome, statements[:] = list(statements), []
    pg_ledger.spool_index.mark_spool_removed([instance_id])

    assert any("SET LOCAL synchronous_commit = off" in s for s in outcome)
    assert not any("synchronous_commit" in s for s in statements)
    assert any(s.startswith("UPDATE instances SET spool_path = NULL") for s in statements)
    row = pg_ledger.database.connection().execute("SHOW synchronous_commit").fetchone()
    assert row[0] == "on"  # the server's setting, for every durable commit


def test_every_write_transaction_takes_the_writer_lock(
        pg_ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    statements = statements_of(pg_ledger, monkeypatch)

    ingest_to(pg_ledger, ["A"])

    begin = next(i for i, s in enumerate(statements) if s.startswith("BEGIN"))
    assert statements[begin + 1].startswith("SELECT pg_advisory_xact_lock(")
    assert "statement_timeout" in statements[begin]  # waiters outlast a hung holder


def test_search_by_patient_and_accession_can_use_an_index(pg_ledger: Ledger) -> None:
    connection = pg_ledger.database.connection()
    connection.execute("SET enable_seqscan = off")  # a tiny table: make the planner show
    plan = connection.execute("EXPLAIN SELECT id FROM instances WHERE patient_id = ?"
                              " AND accession_number = ?", ("P", "A")).fetchall()

    assert any("instances_patient" in row[0] or "instances_accession" in row[0]
               for row in plan), plan


def test_the_schema_is_created_once_when_several_nodes_open_it_at_once(
        postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    opened: list[Ledger] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(Ledger(url=url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert errors == [] and len(opened) == 4
        assert opened[0].diagnostics.count("instances") == 0
    finally:
        for ledger in opened:
            ledger.close()
        postgres_server.drop_database(url)


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    remove_postgres(server)


def test_a_server_that_goes_away_is_a_ledger_error_and_its_return_is_used(
        own_server: PostgresServer) -> None:
    ledger = Ledger(url=own_server.create_database())
    try:
        ingest_to(ledger, ["A"])
        own_server.stop()

        with pytest.raises(LedgerError):
            ledger.diagnostics.ping()
        with pytest.raises(LedgerError):
            ingest_to(ledger, ["A"])

        own_server.start(initialise=False)
        ledger.diagnostics.ping()  # a new connection, no restart of the router
        ingest_to(ledger, ["A"])
        assert ledger.diagnostics.count("instances") == 2
    finally:
        ledger.close()
