"""Which spool files the ledger still needs, and which it may let go."""

from __future__ import annotations

import time
from collections.abc import Sequence

from dde.store.database import Backend, database_errors_as_ledger_errors

_ALL_DELIVERED = ("NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.instance_id = i.id"
                  " AND (d.state != 'delivered' OR d.delivered_at > ?"
                  " OR EXISTS (SELECT 1 FROM delivery_commitments c"
                  " WHERE c.delivery_id = d.id AND c.state = 'pending'))"
                  " AND NOT EXISTS (SELECT 1 FROM delivery_variants dv"
                  "   JOIN variant_deidentifications x ON x.variant_id = dv.variant_id"
                  "   WHERE dv.delivery_id = d.id AND x.held_back IS NOT NULL))")
"""Every delivery of instance ``i`` is delivered (before the retention) and none waits for
the destination to commit to it (a failed commitment sends the instance again: its file
must stay) — or it is held back from a de-identified route: such a delivery never sends a
file (not the original either), so it keeps none in the spool."""


@database_errors_as_ledger_errors
class SpoolIndex:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def releasable_spool_files(self, older_than: float, limit: int = 500,
                               since: float | None = None) -> list[tuple[int, str]]:
        """Spool files whose every delivery is delivered, the last one before ``older_than``,
        and committed when storage commitment was asked for.

        ``since``: look only at instances with a delivery delivered (or a commitment
        resolved) after it (indexed), so
        that a large queue of pending deliveries is not read again at every clean-up; None
        looks at every instance that still has a spool file (instances without any delivery
        included)."""
        if since is None:
            rows = self._database.connection().execute(
                "SELECT i.id, i.spool_path FROM instances i WHERE i.spool_path IS NOT NULL"
                f" AND {_ALL_DELIVERED} LIMIT ?", (older_than, limit)).fetchall()
        else:
            rows = self._database.connection().execute(
                "SELECT i.id, i.spool_path FROM instances i WHERE (i.id IN ("
                "   SELECT d0.instance_id FROM deliveries d0"
                "   WHERE d0.delivered_at > ? AND d0.delivered_at <= ?) OR i.id IN ("
                "   SELECT d1.instance_id FROM delivery_commitments c1"
                "   JOIN deliveries d1 ON d1.id = c1.delivery_id WHERE c1.resolved_at > ?))"
                f" AND i.spool_path IS NOT NULL AND {_ALL_DELIVERED} LIMIT ?",
                (since, older_than, since, older_than, limit)).fetchall()
        return [(int(a), str(b)) for a, b in rows]

    def variant_spool_files(self, instance_ids: Sequence[int]) -> list[str]:
        """The spool files of the edited variants of these instances (they go with the
        original: when every delivery of the instance is done)."""
        if not instance_ids:
            return []
        marks = ", ".join("?" for _ in instance_ids)
        rows = self._database.connection().execute(
            "SELECT spool_path FROM instance_variants WHERE spool_path IS NOT NULL"
            f" AND instance_id IN ({marks})", tuple(instance_ids)).fetchall()
        return [str(r[0]) for r in rows]

    def mark_spool_removed(self, instance_ids: Sequence[int]) -> None:
        """The instances' spool files, variants included, are about to go (committed
        first: a file is never removed while the ledger still names it)."""
        if not instance_ids:
            return
        now = time.time()
        with self._database.transaction() as connection:
            connection.executemany(
                "UPDATE instances SET spool_path = NULL, spool_removed_at = ? WHERE id = ?",
                [(now, i) for i in instance_ids],
            )
            connection.executemany(
                "UPDATE instance_variants SET spool_path = NULL WHERE instance_id = ?"
                " AND spool_path IS NOT NULL", [(i,) for i in instance_ids])

    def spool_paths_in_use(self) -> set[str]:
        connection = self._database.connection()
        rows = connection.execute(
            "SELECT spool_path FROM instances WHERE spool_path IS NOT NULL"
            " UNION ALL SELECT spool_path FROM instance_variants WHERE spool_path IS NOT NULL"
        ).fetchall()
        return {str(r[0]) for r in rows}
