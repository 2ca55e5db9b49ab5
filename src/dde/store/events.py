"""The ledger's event log: study moves, redirects, and what operators should see."""

from __future__ import annotations

import time
from typing import Any

from dde.store.database import Backend, database_errors_as_ledger_errors


@database_errors_as_ledger_errors
class EventLog:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def add_event(self, kind: str, endpoint: str | None, detail: str,
                  target: str | None = None, count: int = 0) -> None:
        with self._database.transaction() as connection:
            connection.execute(
                "INSERT INTO events(at, kind, endpoint, target, count, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), kind, endpoint, target, count, detail),
            )

    def events(self, limit: int = 100) -> list[tuple[Any, ...]]:
        return list(self._database.connection().execute(
            "SELECT id, at, kind, endpoint, target, count, detail FROM events"
            " ORDER BY id DESC LIMIT ?", (limit,)).fetchall())
