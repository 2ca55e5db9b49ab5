"""The delivery queue: what is due for an endpoint, and the outcomes of sending it.

Outcomes follow the legal transitions of :mod:`dde.store.states`; a late outcome for a
delivered delivery changes nothing (delivered is final).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from dde.store.database import Database, database_errors_as_ledger_errors
from dde.store.intake import queued_counts
from dde.store.records import DeliveryOutcome, QueuedDelivery
from dde.store.states import DeliveryState, check_transition


@database_errors_as_ledger_errors
class DeliveryQueue:
    def __init__(self, database: Database) -> None:
        self._database = database

    def due(self, endpoint: str, now: float, limit: int) -> list[QueuedDelivery]:
        rows = self._database.connection().execute(
            "SELECT d.id, d.instance_id, d.endpoint, d.attempts, i.spool_path,"
            " i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.received_at"
            " FROM deliveries d JOIN instances i ON i.id = d.instance_id"
            " WHERE d.endpoint = ? AND d.state = 'pending' AND d.next_attempt_at <= ?"
            " ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (endpoint, now, limit),
        ).fetchall()
        return [QueuedDelivery(*row) for row in rows]

    def next_due_at(self, endpoint: str) -> float | None:
        row = self._database.connection().execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE endpoint = ? AND state = 'pending'",
            (endpoint,),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def record_outcomes(self, outcomes: Sequence[DeliveryOutcome],
                        now: float | None = None) -> None:
        if not outcomes:
            return
        now = time.time() if now is None else now
        with self._database.transaction() as connection:
            for outcome in outcomes:
                row = connection.execute(
                    "SELECT state FROM deliveries WHERE id = ?", (outcome.delivery_id,)
                ).fetchone()
                if row is None:
                    continue
                previous = DeliveryState(row[0])
                if previous is DeliveryState.DELIVERED:
                    continue  # delivered is final; a late duplicate outcome changes nothing
                check_transition(previous, outcome.state)
                connection.execute(
                    "UPDATE deliveries SET state = ?, attempts = attempts + ?, last_error = ?,"
                    " next_attempt_at = ?, updated_at = ?,"
                    " delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END"
                    " WHERE id = ?",
                    (
                        outcome.state.value, 1 if outcome.counts_as_attempt else 0,
                        outcome.error, outcome.next_attempt_at or now, now,
                        outcome.state.value, now, outcome.delivery_id,
                    ),
                )

    def note_error(self, delivery_ids: Iterable[int], error: str) -> None:
        """Record an endpoint-level error on waiting deliveries without spending attempts."""
        ids = list(delivery_ids)
        if not ids:
            return
        with self._database.transaction() as connection:
            connection.executemany(
                "UPDATE deliveries SET last_error = ?, updated_at = ?"
                " WHERE id = ? AND state = 'pending'",
                [(error, time.time(), i) for i in ids],
            )

    def note_endpoint_error(self, endpoint: str, error: str) -> None:
        """Record an endpoint-level error on every delivery waiting for ``endpoint`` (all
        wait for the same reason, not only the batch in hand), without spending attempts."""
        with self._database.transaction() as connection:
            connection.execute(
                "UPDATE deliveries SET last_error = ?, updated_at = ?"
                " WHERE endpoint = ? AND state = 'pending'"
                " AND (last_error IS NULL OR last_error != ?)",
                (error, time.time(), endpoint, error),
            )

    def queued_counts(self) -> dict[str, int]:
        """Pending deliveries per endpoint."""
        return queued_counts(self._database.connection())
