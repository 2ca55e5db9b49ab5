"""The endpoint-status board: the running router publishes each endpoint's health, breaker
and load here (at least once a second and at once on a health change); receiver processes,
``dde route explain``, ``dde endpoints list`` and the API read it — all through
:meth:`EndpointStatusBoard.read`, so they agree on what is current.

A row older than :data:`STATUS_FRESH_SECONDS` is stale: its router is not running, and the
row reads as unknown (not down, no load).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from dde.store.database import Backend, database_errors_as_ledger_errors

STATUS_FRESH_SECONDS = 30.0


@dataclass(frozen=True)
class PublishedStatus:
    """One endpoint's row, as published."""

    endpoint: str
    health: str
    breaker: str
    down_since: float | None = None
    last_error: str | None = None
    load: int | None = None


@dataclass(frozen=True)
class EndpointStatus:
    """One endpoint as the board shows it now."""

    health: str  # up | down | unknown
    breaker: str | None
    down_since: float | None
    last_error: str | None
    load: int | None
    """Instances stored at the last poll, plus deliveries made since the publication."""
    updated_at: float

    @property
    def down(self) -> bool:
        return self.health == "down"


UNKNOWN = EndpointStatus("unknown", None, None, None, None, 0.0)


@database_errors_as_ledger_errors
class EndpointStatusBoard:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def publish(self, rows: Sequence[PublishedStatus]) -> None:
        now = time.time()
        with self._database.transaction() as connection:
            connection.execute("DELETE FROM endpoint_status")
            connection.executemany(
                "INSERT INTO endpoint_status(endpoint, health, breaker, down_since, last_error,"
                " load, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.endpoint, r.health, r.breaker, r.down_since, r.last_error, r.load, now)
                 for r in rows],
            )

    def read(self, now: float | None = None) -> dict[str, EndpointStatus]:
        """Every endpoint with a fresh row: its status, with the deliveries made since the
        publication counted in its load. Stale rows are left out (unknown)."""
        now = time.time() if now is None else now
        connection = self._database.connection()
        rows = connection.execute(
            "SELECT endpoint, health, breaker, down_since, last_error, load, updated_at"
            " FROM endpoint_status WHERE updated_at > ?", (now - STATUS_FRESH_SECONDS,),
        ).fetchall()
        published_at = min((float(r[6]) for r in rows), default=None)
        since: dict[str, int] = {}
        if published_at is not None:
            since = {str(endpoint): int(count) for endpoint, count in connection.execute(
                "SELECT endpoint, COUNT(*) FROM deliveries WHERE delivered_at > ?"
                " GROUP BY endpoint", (published_at,)).fetchall()}
        board = {}
        for endpoint, health, breaker, down_since, last_error, load, updated_at in rows:
            name = str(endpoint)
            stored = None if load is None else int(load) + since.get(name, 0)
            board[name] = EndpointStatus(
                str(health), str(breaker), None if down_since is None else float(down_since),
                last_error, stored, float(updated_at))
        return board
