"""What operators ask and do: where an instance went, searches, the queue, retries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dde.store.commitments import latest_commitments
from dde.store.database import Backend, Connection, database_errors_as_ledger_errors
from dde.store.intake import VARIANT_JOIN, IngestView
from dde.store.records import (
    DeliveryRecord,
    InstanceRecord,
    InstanceSummary,
    QueueEntry,
    QueueSummary,
)
from dde.store.states import DeliveryState


@database_errors_as_ledger_errors
class OperatorQueries:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def where(self, sop_instance_uid: str) -> list[InstanceRecord]:
        connection = self._database.connection()
        rows = connection.execute(
            "SELECT id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
            " study_instance_uid, calling_aet, called_aet, source_ip, rule, size,"
            " received_at, spool_path FROM instances WHERE sop_instance_uid = ? ORDER BY id",
            (sop_instance_uid,),
        ).fetchall()
        records = [InstanceRecord(*row) for row in rows]
        for record in records:
            deliveries = connection.execute(
                "SELECT d.id, d.endpoint, d.role, d.state, d.attempts, d.last_error,"
                " d.next_attempt_at, d.created_at, d.updated_at, d.delivered_at,"
                " t.transfer_syntax_uid, t.transcoded_from, v.rule, v.edits, x.method,"
                " x.sop_instance_uid, x.held_back FROM deliveries d"
                " LEFT JOIN delivery_transcodings t ON t.delivery_id = d.id" + VARIANT_JOIN +
                "WHERE d.instance_id = ? ORDER BY d.role DESC, d.id",
                (record.id,),
            ).fetchall()
            record.deliveries = [DeliveryRecord(*d) for d in deliveries]
        _with_commitments(connection, [d for r in records for d in r.deliveries])
        return records

    def search(self, *, patient_id: str | None = None, accession_number: str | None = None,
               study_instance_uid: str | None = None, since: float | None = None,
               limit: int = 50, offset: int = 0) -> tuple[int, list[InstanceSummary]]:
        """Instances matching every given criterion (exact match), newest first.

        Returns (how many match in all, the page of ``limit`` from ``offset``) with the
        deliveries of each instance of the page.
        """
        clauses: list[str] = []
        parameters: list[Any] = []
        for column, value in (("patient_id", patient_id),
                              ("accession_number", accession_number),
                              ("study_instance_uid", study_instance_uid)):
            if value is not None:
                clauses.append(f"{column} = ?")
                parameters.append(value)
        if since is not None:
            clauses.append("received_at >= ?")
            parameters.append(since)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        connection = self._database.connection()
        total = int(connection.execute(f"SELECT COUNT(*) FROM instances{where}",
                                       parameters).fetchone()[0])
        rows = connection.execute(
            "SELECT id, sop_instance_uid, sop_class_uid, study_instance_uid,"
            " series_instance_uid, patient_id, accession_number, modality, calling_aet, rule,"
            f" size, received_at FROM instances{where}"
            " ORDER BY received_at DESC, id DESC LIMIT ? OFFSET ?",
            (*parameters, limit, offset),
        ).fetchall()
        found = [InstanceSummary(*row) for row in rows]
        by_id = {summary.id: summary for summary in found}
        if by_id:
            marks = ",".join("?" for _ in by_id)
            deliveries = connection.execute(
                "SELECT d.instance_id, d.id, d.endpoint, d.role, d.state, d.attempts,"
                " d.last_error, d.next_attempt_at, d.created_at, d.updated_at, d.delivered_at,"
                " t.transfer_syntax_uid, t.transcoded_from, v.rule, v.edits, x.method,"
                " x.sop_instance_uid, x.held_back FROM deliveries d"
                " LEFT JOIN delivery_transcodings t ON t.delivery_id = d.id" + VARIANT_JOIN +
                f"WHERE d.instance_id IN ({marks}) ORDER BY d.role DESC, d.id",
                tuple(by_id),
            ).fetchall()
            for instance_id, *delivery in deliveries:
                by_id[int(instance_id)].deliveries.append(DeliveryRecord(*delivery))
            _with_commitments(connection, [d for s in found for d in s.deliveries])
        return total, found

    def queue_summary(self) -> dict[str, QueueSummary]:
        """Per endpoint with pending deliveries: their count and the oldest's queue time."""
        rows = self._database.connection().execute(
            "SELECT endpoint, COUNT(*), MIN(created_at) FROM deliveries"
            " WHERE state = 'pending' GROUP BY endpoint"
        ).fetchall()
        return {str(endpoint): QueueSummary(int(count), None if oldest is None else float(oldest))
                for endpoint, count, oldest in rows}

    def received_per_minute(self, since: float,
                            exclude_called: Sequence[str] = ()) -> dict[int, int]:
        """Instances received per minute since ``since``: {minute (epoch // 60): count};
        ``exclude_called``: not those received with these called AE titles (the copies
        ``reconcile --repair`` ingests)."""
        marks = ", ".join("?" for _ in exclude_called)
        excluded = f" AND called_aet NOT IN ({marks})" if exclude_called else ""
        rows = self._database.connection().execute(
            "SELECT CAST(received_at / 60 AS INTEGER) AS minute, COUNT(*) FROM instances"
            f" WHERE received_at >= ?{excluded} GROUP BY minute",
            (since, *exclude_called),
        ).fetchall()
        return {int(minute): int(count) for minute, count in rows}

    def delivered_per_minute(self, since: float) -> dict[str, dict[int, int]]:
        """Deliveries completed per endpoint and minute since ``since``."""
        rows = self._database.connection().execute(
            "SELECT endpoint, CAST(delivered_at / 60 AS INTEGER) AS minute, COUNT(*)"
            " FROM deliveries WHERE delivered_at IS NOT NULL AND delivered_at >= ?"
            " GROUP BY endpoint, minute",
            (since,),
        ).fetchall()
        result: dict[str, dict[int, int]] = {}
        for endpoint, minute, count in rows:
            result.setdefault(str(endpoint), {})[int(minute)] = int(count)
        return result

    def queue(self, states: Sequence[DeliveryState] = (DeliveryState.PENDING, DeliveryState.FAILED),
              limit: int = 1000) -> list[QueueEntry]:
        marks = ",".join("?" for _ in states)
        rows = self._database.connection().execute(
            "SELECT d.id, d.endpoint, d.state, d.attempts, d.last_error, d.next_attempt_at,"
            " d.created_at, d.instance_id, i.sop_instance_uid FROM deliveries d"
            f" JOIN instances i ON i.id = d.instance_id WHERE d.state IN ({marks})"
            " ORDER BY d.state, d.endpoint, d.id LIMIT ?",
            (*[s.value for s in states], limit),
        ).fetchall()
        return [QueueEntry(*row) for row in rows]

    def state_counts(self) -> dict[str, dict[str, int]]:
        rows = self._database.connection().execute(
            "SELECT endpoint, state, COUNT(*) FROM deliveries GROUP BY endpoint, state"
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for endpoint, state, count in rows:
            counts.setdefault(str(endpoint), {})[str(state)] = int(count)
        return counts

    def retry(self, delivery_id: int) -> DeliveryState | None:
        """Make one failed delivery pending again, due now; return its previous state."""
        with self._database.transaction() as connection:
            row = connection.execute(
                "SELECT state FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            if row is None:
                return None
            previous = DeliveryState(row[0])
            if previous is DeliveryState.FAILED:
                now = time.time()
                connection.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                    " updated_at = ? WHERE id = ?",
                    (now, now, delivery_id),
                )
            elif previous is DeliveryState.PENDING:
                connection.execute(
                    "UPDATE deliveries SET next_attempt_at = ? WHERE id = ?",
                    (time.time(), delivery_id),
                )
            return previous

    def retry_failed(self) -> int:
        now = time.time()
        with self._database.transaction() as connection:
            cursor = connection.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " updated_at = ? WHERE state = 'failed'",
                (now, now),
            )
            return int(cursor.rowcount)

    def waiting_for(self, sop_instance_uid: str, endpoint: str) -> bool:
        """Is a delivery of this instance to ``endpoint`` still pending?"""
        row = self._database.connection().execute(
            "SELECT 1 FROM deliveries d JOIN instances i ON i.id = d.instance_id"
            " WHERE i.sop_instance_uid = ? AND d.endpoint = ? AND d.state = 'pending' LIMIT 1",
            (sop_instance_uid, endpoint),
        ).fetchone()
        return row is not None

    def waiting_count(self, endpoint: str) -> int:
        row = self._database.connection().execute(
            "SELECT COUNT(*) FROM deliveries WHERE endpoint = ?"
            " AND state IN ('pending', 'failed')",
            (endpoint,),
        ).fetchone()
        return int(row[0])

    def pin_for(self, study_instance_uid: str, group: str | None = None) -> str | None:
        return IngestView(self._database.connection()).pin_for(study_instance_uid, group)


def _with_commitments(connection: Connection, deliveries: Sequence[DeliveryRecord]) -> None:
    """Fill in each delivery's latest storage commitment, when it was asked of the
    delivery's endpoint (one moved elsewhere since shows none)."""
    latest = latest_commitments(connection, (d.id for d in deliveries))
    for delivery in deliveries:
        found = latest.get(delivery.id)
        if found is not None and found.endpoint == delivery.endpoint:
            delivery.commitment = found.state.value
            delivery.commitment_reason = found.reason
