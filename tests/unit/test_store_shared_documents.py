"""The shared documents (the configuration every node of a cluster shares), on both
backends: read, write with a version, seed only when absent, the versions in one query, and
a change refused by its edit leaves nothing written."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dde.store.errors import LedgerError
from dde.store.ledger import Ledger


def test_a_document_never_written_reads_as_none(ledger: Ledger) -> None:
    assert ledger.shared_documents.read("endpoints") is None
    assert ledger.shared_documents.versions() == {}


def test_each_write_replaces_the_body_and_counts_the_version(ledger: Ledger) -> None:
    documents = ledger.shared_documents

    assert documents.write("rules", "rules: []\n", "node1") == 1
    assert documents.write("rules", "rules: [x]\n", "node2") == 2

    assert documents.read("rules") == ("rules: [x]\n", 2)
    assert documents.versions() == {"rules": 2}
    updated_by = ledger.database.connection().execute(
        "SELECT updated_by FROM shared_documents WHERE name = ?", ("rules",)).fetchone()[0]
    assert updated_by == "node2"


def test_seed_writes_only_the_documents_that_are_absent(ledger: Ledger) -> None:
    documents = ledger.shared_documents
    documents.write("endpoints", "[1]")

    documents.seed({"endpoints": "[2]", "rules": "seeded"})
    documents.seed({"endpoints": "[3]", "rules": "again"})

    assert documents.read_many(("endpoints", "rules", "other")) == {
        "endpoints": ("[1]", 1), "rules": ("seeded", 1)}


def test_update_edits_the_current_body(ledger: Ledger) -> None:
    documents = ledger.shared_documents
    seen: list[str | None] = []

    def append(body: str | None) -> str:
        seen.append(body)
        return (body or "") + "x"

    documents.update("endpoints", append)
    documents.update("endpoints", append)

    assert seen == [None, "x"]
    assert documents.read("endpoints") == ("xx", 2)


def test_an_edit_that_raises_writes_nothing(ledger: Ledger) -> None:
    documents = ledger.shared_documents
    documents.write("endpoints", "kept")

    def refuse(body: str | None) -> str:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        documents.update("endpoints", refuse)
    assert documents.read("endpoints") == ("kept", 1)


def test_an_edit_may_read_another_document_inside_its_transaction(ledger: Ledger) -> None:
    documents = ledger.shared_documents
    documents.write("rules", "the rules")

    version = documents.update("endpoints", lambda _: f"checked against {documents.read('rules')}")

    assert version == 1
    assert documents.read("endpoints") == ("checked against ('the rules', 1)", 1)


def test_concurrent_updates_from_two_connections_lose_no_change(ledger: Ledger) -> None:
    """Two writers (threads: a connection each) appending at once: every append is kept,
    because the read and the write are one serialised transaction."""
    documents = ledger.shared_documents
    errors: list[BaseException] = []

    def append_many(mark: str) -> None:
        try:
            for _ in range(20):
                documents.update("endpoints", lambda body: (body or "") + mark)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    writers = [threading.Thread(target=append_many, args=(m,)) for m in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert errors == []
    body, version = documents.read("endpoints") or ("", 0)
    assert sorted(body) == ["a"] * 20 + ["b"] * 20 and version == 40


def test_an_older_ledger_gets_the_table_when_opened(tmp_path: Path) -> None:
    """A ledger written before the table existed (dropped here) gets it at the next open,
    with no schema version step: a node of an older dde keeps working beside it."""
    first = Ledger(tmp_path / "dde.sqlite3")
    with first.database.transaction() as connection:
        connection.execute("DROP TABLE shared_documents")
    first.close()

    again = Ledger(tmp_path / "dde.sqlite3")
    try:
        assert again.shared_documents.versions() == {}
        schema = again.database.connection().execute(
            "SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        assert schema == "1"
    finally:
        again.close()


def test_a_database_error_leaves_as_a_ledger_error(ledger: Ledger) -> None:
    with ledger.database.transaction() as connection:
        connection.execute("DROP TABLE shared_documents")

    with pytest.raises(LedgerError):
        ledger.shared_documents.versions()
    with pytest.raises(LedgerError):
        ledger.shared_documents.write("rules", "text")
