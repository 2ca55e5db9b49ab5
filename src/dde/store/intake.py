"""The ingest write: one instance, its deliveries and its study pins, in one transaction.

The routing decision runs inside that transaction (it reads pins and queue depths through
:class:`IngestView`), so what it read cannot change before the rows it implies are written.
The store knows a decision only by the shape of :class:`Placement`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from dde.store.database import Backend, Connection, database_errors_as_ledger_errors
from dde.store.group_commit import GroupCommit
from dde.store.records import NewInstance


class Placement(Protocol):
    """What the ingest write needs of a routing decision."""

    @property
    def rule(self) -> str: ...

    @property
    def destinations(self) -> Sequence[str]: ...

    @property
    def mirrors(self) -> Sequence[str]: ...

    def all_pins(self) -> Sequence[tuple[str, str, str]]: ...


P = TypeVar("P", bound=Placement)


class IngestView:
    """Pins and queue depths as one connection sees them (a routing ``PinView``)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def pin_for(self, study_instance_uid: str, group: str | None = None) -> str | None:
        if group is None:
            row = self._connection.execute(
                "SELECT endpoint FROM study_pins WHERE study_instance_uid = ? ORDER BY grp",
                (study_instance_uid,),
            ).fetchone()
        else:
            row = self._connection.execute(
                "SELECT endpoint FROM study_pins WHERE study_instance_uid = ? AND grp = ?",
                (study_instance_uid, group),
            ).fetchone()
        return None if row is None else str(row[0])

    def queued_counts(self) -> dict[str, int]:
        return queued_counts(self._connection)


def queued_counts(connection: Connection) -> dict[str, int]:
    """Pending deliveries per endpoint."""
    rows = connection.execute(
        "SELECT endpoint, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY endpoint"
    ).fetchall()
    return {str(endpoint): int(count) for endpoint, count in rows}


@database_errors_as_ledger_errors
class IngestRecords:
    def __init__(self, database: Backend) -> None:
        self._database = database
        self._group = GroupCommit(database)

    def ingest(self, instance: NewInstance, decide: Callable[[IngestView], P]) -> tuple[int, P]:
        """Commit one instance and its deliveries atomically; return its id and placement
        once committed.

        ``decide`` runs inside the transaction. Instances ingested at the same moment (by
        several associations) share one transaction and one commit (group commit), each in
        a savepoint of its own: one refused by ``decide`` leaves the others written.
        """
        return self._group.run(lambda connection: self._write(connection, instance, decide))

    @staticmethod
    def _write(connection: Connection, instance: NewInstance,
               decide: Callable[[IngestView], P]) -> tuple[int, P]:
        route = decide(IngestView(connection))
        for pin in route.all_pins():
            connection.execute(
                "INSERT INTO study_pins(study_instance_uid, endpoint, grp, pinned_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(study_instance_uid, grp)"
                " DO UPDATE SET endpoint = excluded.endpoint, pinned_at = excluded.pinned_at",
                (*pin, instance.received_at),
            )
        row = connection.execute(
            "INSERT INTO instances(sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
            " study_instance_uid, series_instance_uid, patient_id, accession_number,"
            " modality, calling_aet, called_aet, source_ip, rule, size, spool_path,"
            " received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (
                instance.sop_instance_uid, instance.sop_class_uid,
                instance.transfer_syntax_uid, instance.study_instance_uid,
                instance.series_instance_uid, instance.patient_id,
                instance.accession_number, instance.modality, instance.calling_aet,
                instance.called_aet, instance.source_ip, route.rule, instance.size,
                instance.spool_path, instance.received_at,
            ),
        ).fetchone()
        instance_id = int(row[0])
        now = instance.received_at
        connection.executemany(
            "INSERT INTO deliveries(instance_id, endpoint, role, state, next_attempt_at,"
            " created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            [(instance_id, name, "route", now, now, now) for name in route.destinations]
            + [(instance_id, name, "mirror", now, now, now) for name in route.mirrors],
        )
        return instance_id, route

    def view(self) -> IngestView:
        """A read-only view of pins and queue depths (for explaining a decision)."""
        return IngestView(self._database.connection())
