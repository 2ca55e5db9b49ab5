"""Study moves: failover and forced removal move undelivered deliveries and re-pin.

Every move is recorded as an event in the same transaction.
"""

from __future__ import annotations

import time

from dde.store.database import Backend, database_errors_as_ledger_errors


@database_errors_as_ledger_errors
class StudyMoves:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def pinned_studies_with_pending(self, endpoint: str) -> list[tuple[str, str]]:
        """(study, group) of the studies pinned to ``endpoint`` with deliveries still due."""
        rows = self._database.connection().execute(
            "SELECT p.study_instance_uid, p.grp FROM study_pins p WHERE p.endpoint = ?"
            " AND EXISTS (SELECT 1 FROM deliveries d JOIN instances i ON i.id = d.instance_id"
            "   WHERE i.study_instance_uid = p.study_instance_uid AND d.endpoint = ?"
            "   AND d.role = 'route' AND d.state = 'pending')",
            (endpoint, endpoint),
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def move_study(self, study_instance_uid: str, source: str, target: str,
                   reason: str) -> int:
        """Move the undelivered rest of a study from ``source`` to ``target`` and re-pin it.

        Returns how many deliveries moved; the ledger keeps an event of the move.
        """
        now = time.time()
        with self._database.transaction() as connection:
            cursor = connection.execute(
                "UPDATE deliveries SET endpoint = ?, state = 'pending', next_attempt_at = ?,"
                " updated_at = ?, last_error = ? WHERE endpoint = ? AND role = 'route'"
                " AND state IN ('pending', 'failed') AND instance_id IN"
                " (SELECT id FROM instances WHERE study_instance_uid = ?)"
                " AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE"
                "   o.instance_id = deliveries.instance_id AND o.endpoint = ?)",
                (target, now, now, f"moved from {source}: {reason}", source,
                 study_instance_uid, target),
            )
            moved = int(cursor.rowcount)
            connection.execute(
                "UPDATE study_pins SET endpoint = ?, pinned_at = ?"
                " WHERE study_instance_uid = ? AND endpoint = ?",
                (target, now, study_instance_uid, source),
            )
            connection.execute(
                "INSERT INTO events(at, kind, endpoint, target, count, detail)"
                " VALUES (?, 'study-moved', ?, ?, ?, ?)",
                (now, source, target, moved, reason),
            )
        return moved

    def redirect_all(self, source: str, target: str, reason: str) -> int:
        """Move every pending or failed delivery of ``source`` to ``target`` (forced removal)."""
        now = time.time()
        with self._database.transaction() as connection:
            cursor = connection.execute(
                "UPDATE deliveries SET endpoint = ?, state = 'pending', next_attempt_at = ?,"
                " attempts = 0, updated_at = ?, last_error = ? WHERE endpoint = ?"
                " AND state IN ('pending', 'failed') AND NOT EXISTS (SELECT 1 FROM deliveries o"
                "   WHERE o.instance_id = deliveries.instance_id AND o.endpoint = ?)",
                (target, now, now, f"redirected from {source}: {reason}", source, target),
            )
            moved = int(cursor.rowcount)
            # an instance that already has a delivery to the target needs no second one
            connection.execute(
                "DELETE FROM deliveries WHERE endpoint = ? AND state IN ('pending', 'failed')",
                (source,),
            )
            connection.execute("UPDATE study_pins SET endpoint = ? WHERE endpoint = ?",
                               (target, source))
            connection.execute(
                "INSERT INTO events(at, kind, endpoint, target, count, detail)"
                " VALUES (?, 'endpoint-redirected', ?, ?, ?, ?)",
                (now, source, target, moved, reason),
            )
        return moved
