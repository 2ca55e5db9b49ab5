"""Diagnostics: what the tests, the benchmarks and an operator's look at the ledger read —
small, named, typed questions, so that no SQL is written outside :mod:`dde.store`.

:class:`Diagnostics` is the ledger's ``diagnostics`` repository. Reads answer from the
committed state; nothing here is on the router's hot path. Methods marked "for tests" write
states the real API reaches only over time (:meth:`Diagnostics.seed`) or stand in for
another process (:func:`hold_exclusive_lock`, :meth:`Diagnostics.checkpoint`,
:func:`backend_error`); the router never calls them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dde.store.database import Backend, database_errors_as_ledger_errors
from dde.store.records import SeedInstance, StoredDelivery, StoredInstance, StudyPin

_COUNTS: dict[str, str] = {
    "instances": "SELECT COUNT(*) FROM instances",
    "deliveries": "SELECT COUNT(*) FROM deliveries",
    "study_pins": "SELECT COUNT(*) FROM study_pins",
    "events": "SELECT COUNT(*) FROM events",
    "instance_variants": "SELECT COUNT(*) FROM instance_variants",
}
"""The tables :meth:`Diagnostics.count` counts, each with its fixed statement."""

COUNTED_TABLES = frozenset(_COUNTS)

_INSTANCE_COLUMNS = (
    "id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, study_instance_uid,"
    " series_instance_uid, patient_id, accession_number, modality, calling_aet, called_aet,"
    " source_ip, rule, size, spool_path, received_at, spool_removed_at"
)

_DELIVERY_FILTERS = {
    "endpoint": "d.endpoint = ?",
    "state": "d.state = ?",
    "instance_id": "d.instance_id = ?",
    "sop_instance_uid": "i.sop_instance_uid = ?",
}


@database_errors_as_ledger_errors
class Diagnostics:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def count(self, table: str) -> int:
        """Rows in one of :data:`COUNTED_TABLES`; any other name is a ValueError."""
        statement = _COUNTS.get(table)
        if statement is None:
            raise ValueError(f"cannot count {table!r}: one of {sorted(COUNTED_TABLES)}")
        return int(self._database.connection().execute(statement).fetchone()[0])

    def instances(self, after_id: int = 0) -> list[StoredInstance]:
        """Every instance with an id above ``after_id``, in id order."""
        rows = self._database.connection().execute(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE id > ? ORDER BY id", (after_id,)
        ).fetchall()
        return [StoredInstance(*row) for row in rows]

    def max_instance_id(self) -> int:
        """The highest instance id (0 while the ledger holds none)."""
        row = self._database.connection().execute(
            "SELECT COALESCE(MAX(id), 0) FROM instances").fetchone()
        return int(row[0])

    def sop_instance_uids(self) -> set[str]:
        rows = self._database.connection().execute(
            "SELECT sop_instance_uid FROM instances").fetchall()
        return {str(row[0]) for row in rows}

    def deliveries(self, *, endpoint: str | None = None, state: str | None = None,
                   instance_id: int | None = None,
                   sop_instance_uid: str | None = None) -> list[StoredDelivery]:
        """Deliveries matching every given criterion, in id order."""
        clauses: list[str] = []
        parameters: list[object] = []
        for name, value in (("endpoint", endpoint), ("state", state),
                            ("instance_id", instance_id),
                            ("sop_instance_uid", sop_instance_uid)):
            if value is not None:
                clauses.append(_DELIVERY_FILTERS[name])
                parameters.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._database.connection().execute(
            "SELECT d.id, d.instance_id, i.sop_instance_uid, d.endpoint, d.role, d.state,"
            " d.attempts, d.last_error, d.next_attempt_at, d.created_at, d.updated_at,"
            f" d.delivered_at FROM deliveries d JOIN instances i ON i.id = d.instance_id{where}"
            " ORDER BY d.id", parameters,
        ).fetchall()
        return [StoredDelivery(*row) for row in rows]

    def delivery_states(self) -> dict[str, int]:
        """{state: how many deliveries are in it} (states without any left out)."""
        rows = self._database.connection().execute(
            "SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def pins(self) -> list[StudyPin]:
        """Every study pin, by study and group."""
        rows = self._database.connection().execute(
            "SELECT study_instance_uid, grp, endpoint, pinned_at FROM study_pins"
            " ORDER BY study_instance_uid, grp").fetchall()
        return [StudyPin(str(s), str(g), str(e), float(t)) for s, g, e, t in rows]

    def ping(self) -> None:
        """Does the ledger answer a query? :class:`LedgerError` if not (readiness checks)."""
        self._database.connection().execute("SELECT 1").fetchone()

    def checkpoint(self) -> None:
        """For fault tests: copy the write-ahead log into the database file and empty it,
        so that the file alone holds every page (to damage it on purpose)."""
        self._database.checkpoint()

    def seed(self, entries: Iterable[SeedInstance]) -> int:
        """For tests and benchmarks: write instances with their deliveries, in any state and
        at any past time, in one transaction; return how many instances were written.

        The real API reaches such a history one transaction (and one moment) per instance and
        outcome; this writes thousands at once. No routing runs and no study is pinned.
        """
        entries = list(entries)
        with self._database.transaction() as connection:
            first = int(connection.execute(
                "SELECT COALESCE(MAX(id), 0) FROM instances").fetchone()[0])
            instances = []
            deliveries = []
            for number, entry in enumerate(entries, start=first + 1):
                new = entry.instance
                removed = entry.spool_removed_at is not None
                instances.append((
                    number, new.sop_instance_uid, new.sop_class_uid, new.transfer_syntax_uid,
                    new.study_instance_uid, new.series_instance_uid, new.patient_id,
                    new.accession_number, new.modality, new.calling_aet, new.called_aet,
                    new.source_ip, entry.rule, new.size, None if removed else new.spool_path,
                    new.received_at, entry.spool_removed_at))
                for delivery in entry.deliveries:
                    created = (new.received_at if delivery.created_at is None
                               else delivery.created_at)
                    deliveries.append((
                        number, delivery.endpoint, delivery.role, delivery.state.value,
                        delivery.attempts, delivery.last_error,
                        created if delivery.next_attempt_at is None
                        else delivery.next_attempt_at,
                        created, created if delivery.updated_at is None else delivery.updated_at,
                        delivery.delivered_at))
            connection.executemany(
                f"INSERT INTO instances({_INSTANCE_COLUMNS})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", instances)
            connection.executemany(
                "INSERT INTO deliveries(instance_id, endpoint, role, state, attempts,"
                " last_error, next_attempt_at, created_at, updated_at, delivered_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)", deliveries)
            self._database.ids_written(connection, "instances")
        return len(entries)


@contextmanager
def hold_exclusive_lock(path: Path) -> Iterator[None]:
    """For fault tests: hold an exclusive lock on the database at ``path`` for the block,
    as another process with a write transaction open would (nothing is written)."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
    finally:
        holder.close()


def backend_error(message: str) -> Exception:
    """For fault tests: an error as the database itself raises it (before the store turns it
    into a :class:`LedgerError`), to inject where the ledger is faked."""
    return sqlite3.OperationalError(message)
