"""Group commit: concurrent ingests share transactions, each writer returns only after its
own rows are committed, a writer refused by its routing decision leaves the others of its
batch written, and a failed commit fails every writer of the batch."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest
from tests.support.unitkit import new_instance

from dde.routing.route import Route
from dde.store.database import Database
from dde.store.errors import LedgerError
from dde.store.group_commit import GroupCommit
from dde.store.intake import IngestView
from dde.store.ledger import Ledger


class NoRoute(Exception):
    pass


def route_to(*destinations: str) -> Any:
    def decide(view: IngestView) -> Route:
        return Route("default", destinations, ())
    return decide


def test_concurrent_ingests_share_commits_and_all_land(ledger: Ledger) -> None:
    writers = 16
    start = threading.Barrier(writers)
    ids: list[int] = []
    visible: list[int] = []
    lock = threading.Lock()

    def ingest(number: int) -> None:
        start.wait()
        for repeat in range(5):
            instance_id, _ = ledger.intake.ingest(
                new_instance(f"ab/{number}-{repeat}.dcm",
                             sop_instance_uid=f"1.2.{number}.{repeat}"),
                route_to("A"))
            # committed before ingest returned: this thread's own connection (not the one
            # of the writer that led the batch) sees it now
            seen = ledger.database.connection().execute(
                "SELECT COUNT(*) FROM instances WHERE id = ?", (instance_id,)).fetchone()[0]
            with lock:
                ids.append(instance_id)
                visible.append(seen)

    threads = [threading.Thread(target=ingest, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(ids) == len(set(ids)) == writers * 5
    assert visible == [1] * writers * 5
    group = ledger.intake._group
    assert group.transactions < writers * 5  # some commits were shared
    count = ledger.database.connection().execute("SELECT COUNT(*) FROM instances").fetchone()
    assert count[0] == writers * 5


def test_a_refused_writer_leaves_the_others_of_its_batch_written(tmp_path: Any) -> None:
    database = Database(tmp_path / "g.sqlite3")
    database.connection().execute("CREATE TABLE t (v INTEGER)")
    group = GroupCommit(database)
    gate = threading.Event()
    results: dict[int, Any] = {}

    def insert(value: int) -> Any:
        def work(connection: sqlite3.Connection) -> int:
            if value == 1:
                gate.wait(5)  # hold the first batch until the others are queued
            connection.execute("INSERT INTO t VALUES (?)", (value,))
            if value == 3:
                raise NoRoute("refused")
            return value
        return work

    def run(value: int) -> None:
        try:
            results[value] = group.run(insert(value))
        except NoRoute as exc:
            results[value] = exc

    first = threading.Thread(target=run, args=(1,))
    first.start()
    others = [threading.Thread(target=run, args=(v,)) for v in (2, 3, 4)]
    for thread in others:
        thread.start()
    while len(group._waiting) < 3:  # the three are queued behind the first batch
        threading.Event().wait(0.01)
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert results[1] == 1 and results[2] == 2 and results[4] == 4
    assert isinstance(results[3], NoRoute)
    rows = database.connection().execute("SELECT v FROM t ORDER BY v").fetchall()
    assert rows == [(1,), (2,), (4,)]
    assert group.transactions == 2  # the first alone, then 2, 3 and 4 together


def test_a_failed_commit_fails_every_writer_of_the_batch(tmp_path: Any,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    database = Database(tmp_path / "g.sqlite3")
    database.connection().execute("CREATE TABLE t (v INTEGER)")
    group = GroupCommit(database)

    def failing_transaction() -> Any:
        raise LedgerError("disk I/O error")

    monkeypatch.setattr(database, "transaction", failing_transaction)
    with pytest.raises(LedgerError):
        group.run(lambda connection: connection.execute("INSERT INTO t VALUES (1)"))
    monkeypatch.undo()
    assert database.connection().execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    assert group.run(lambda connection: 7) == 7  # the lead was handed back
