"""Documents the nodes sharing one ledger share: a name, a text body and a version.

The configuration of a cluster (the endpoint list, the rules text; see
:mod:`dde.shared_config`) lives here so that a change made on one node reaches the others:
each node polls :meth:`SharedDocuments.versions` (one small query) and reads a document
again only when its version moved.

A change is a read and a write in one write transaction (:meth:`SharedDocuments.update`):
writers are serialised on both backends (``BEGIN IMMEDIATE``; PostgreSQL's writer lock), so
two nodes changing the same document at the same moment both keep their change — the second
edits what the first wrote. Seeding (:meth:`SharedDocuments.seed`) never replaces a document
another node wrote first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from dde.store.database import Backend, database_errors_as_ledger_errors

Edit = Callable[[str | None], str]
"""The new body from the current one (None: no such document yet); may raise to refuse."""


@database_errors_as_ledger_errors
class SharedDocuments:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def read(self, name: str) -> tuple[str, int] | None:
        """``(body, version)`` of a document, or None when it was never written."""
        row = self._database.connection().execute(
            "SELECT body, version FROM shared_documents WHERE name = ?", (name,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def read_many(self, names: tuple[str, ...]) -> dict[str, tuple[str, int]]:
        """Several documents read by one statement (one snapshot): ``{name: (body,
        version)}`` for those that exist."""
        marks = ",".join("?" for _ in names)
        rows = self._database.connection().execute(
            f"SELECT name, body, version FROM shared_documents WHERE name IN ({marks})",
            names).fetchall()
        return {str(name): (str(body), int(version)) for name, body, version in rows}

    def update(self, name: str, edit: Edit, updated_by: str = "") -> int:
        """Replace a document by ``edit(current body)`` inside one write transaction; its
        new version (one more than before; 1 for a new one). An exception from ``edit``
        rolls back: nothing is written."""
        with self._database.transaction() as connection:
            row = connection.execute(
                "SELECT body, version FROM shared_documents WHERE name = ?",
                (name,)).fetchone()
            body = edit(None if row is None else str(row[0]))
            version = 1 if row is None else int(row[1]) + 1
            connection.execute(
                "INSERT INTO shared_documents(name, body, version, updated_at, updated_by)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET body = excluded.body,"
                " version = excluded.version, updated_at = excluded.updated_at,"
                " updated_by = excluded.updated_by",
                (name, body, version, time.time(), updated_by or None))
            return version

    def write(self, name: str, body: str, updated_by: str = "") -> int:
        """Replace a document (the last writer wins); its new version."""
        return self.update(name, lambda _: body, updated_by)

    def seed(self, documents: Mapping[str, str], updated_by: str = "") -> None:
        """Write each document that does not exist yet (version 1), in one transaction; one
        that exists (another node seeded or changed it first) stays as it is."""
        now = time.time()
        with self._database.transaction() as connection:
            connection.executemany(
                "INSERT INTO shared_documents(name, body, version, updated_at, updated_by)"
                " VALUES (?, ?, 1, ?, ?) ON CONFLICT(name) DO NOTHING",
                [(name, body, now, updated_by or None) for name, body in documents.items()])

    def versions(self) -> dict[str, int]:
        """Every document's version: what a node polls to notice another node's change."""
        rows = self._database.connection().execute(
            "SELECT name, version FROM shared_documents").fetchall()
        return {str(name): int(version) for name, version in rows}
