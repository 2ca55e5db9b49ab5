"""The ingest write: one instance, its deliveries and its study pins, in one transaction.

A study's pin is unique per group (the primary key of ``study_pins``): a new pin is written
only where none stands, a re-pin only over the pin its decision read, and a decision that
lost is made again over the winner (:func:`_pin`), so two nodes receiving one new study at
once pin it to one storage even apart from the writer lock every ingest still takes.

The routing decision runs inside that transaction (it reads pins and queue depths through
:class:`IngestView`), so what it read cannot change before the rows it implies are written.
The store knows a decision only by the shape of :class:`Placement`.

Edited variants (a rule's ``set``/``remove``) are files the ingest wrote to the spool
before the transaction; the same transaction records them (``instance_variants``) and which
delivery sends which (``delivery_variants``), so a delivery never sends the wrong bytes:
its variant is committed with it or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from dde.store.database import Backend, Connection, database_errors_as_ledger_errors
from dde.store.errors import LedgerError
from dde.store.group_commit import GroupCommit
from dde.store.records import NewInstance, NewVariant

VARIANT_JOIN = (" LEFT JOIN delivery_variants dv ON dv.delivery_id = d.id"
                " LEFT JOIN instance_variants v ON v.id = dv.variant_id"
                " LEFT JOIN variant_deidentifications x ON x.variant_id = v.id ")
"""How a query on deliveries ``d`` reaches the edited variant ``v`` a delivery sends (its
rule, spool file, edits) and, when it is de-identified, ``x`` (how, its SOP Instance UID,
or why it was held back); no row: the delivery sends the instance as received."""


class Placement(Protocol):
    """What the ingest write needs of a routing decision."""

    @property
    def rule(self) -> str: ...

    @property
    def destinations(self) -> Sequence[str]: ...

    @property
    def mirrors(self) -> Sequence[str]: ...

    def all_pins(self) -> Sequence[tuple[str, str, str]]: ...

    @property
    def variants(self) -> Sequence[tuple[str, str]]:
        """(destination, rule) for each destination that gets a rule's edited bytes."""
        ...


P = TypeVar("P", bound=Placement)


class IngestView:
    """Pins and queue depths as one connection sees them (a routing ``PinView``). It
    remembers each pin it was asked for: a new pin is written only over the one its
    decision saw."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.pins_seen: dict[tuple[str, str], str | None] = {}
        """{(study, group): the endpoint pinned, or None} as :meth:`pin_for` read them."""

    def pin_for(self, study_instance_uid: str, group: str | None = None) -> str | None:
        if group is None:
            row = self._connection.execute(
                "SELECT endpoint FROM study_pins WHERE study_instance_uid = ? ORDER BY grp",
                (study_instance_uid,),
            ).fetchone()
            return None if row is None else str(row[0])
        found = _pinned(self._connection, study_instance_uid, group)
        self.pins_seen[(study_instance_uid, group)] = found
        return found

    def queued_counts(self) -> dict[str, int]:
        return queued_counts(self._connection)


PIN_ATTEMPTS = 3
"""Routing decisions tried for one instance whose new pin lost to another's: the second
sees the winner and follows it; a third is for a winner moved again meanwhile."""


def _pinned(connection: Connection, study_instance_uid: str, group: str) -> str | None:
    row = connection.execute(
        "SELECT endpoint FROM study_pins WHERE study_instance_uid = ? AND grp = ?",
        (study_instance_uid, group),
    ).fetchone()
    return None if row is None else str(row[0])


def _pin(connection: Connection, pin: tuple[str, str, str], seen: str | None,
         at: float) -> bool:
    """Write ``pin`` (study, endpoint, group) unless the study's pin in that group is no
    longer ``seen`` (what the decision read; None: no pin); whether the study is now pinned
    there.

    The unique key decides, not the writer lock alone: of two nodes pinning one new study
    at once, the second's insert meets the first's row (waiting for its commit) and leaves
    it, and its decision is made again over the winner. A re-pin (failover) replaces only
    the pin its decision saw."""
    study, endpoint, group = pin
    written = connection.execute(
        "INSERT INTO study_pins(study_instance_uid, endpoint, grp, pinned_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT(study_instance_uid, grp)"
        " DO UPDATE SET endpoint = excluded.endpoint, pinned_at = excluded.pinned_at"
        " WHERE study_pins.endpoint = CAST(? AS TEXT) RETURNING endpoint",
        (study, endpoint, group, at, seen),
    ).fetchone()
    return written is not None or _pinned(connection, study, group) == endpoint


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

    def ingest(self, instance: NewInstance, decide: Callable[[IngestView], P],
               variants: Sequence[NewVariant] = ()) -> tuple[int, P]:
        """Commit one instance and its deliveries atomically; return its id and placement
        once committed. ``variants``: the edited copies made for the rules the placement
        may name in its ``variants`` (those it names are recorded; the caller removes the
        files of the others).

        ``decide`` runs inside the transaction. Instances ingested at the same moment (by
        several associations) share one transaction and one commit (group commit), each in
        a savepoint of its own: one refused by ``decide`` leaves the others written.
        """
        return self._group.run(
            lambda connection: self._write(connection, instance, decide, variants))

    @staticmethod
    def _write(connection: Connection, instance: NewInstance,
               decide: Callable[[IngestView], P],
               variants: Sequence[NewVariant] = ()) -> tuple[int, P]:
        for _ in range(PIN_ATTEMPTS):
            view = IngestView(connection)
            route = decide(view)
            if all(_pin(connection, pin, view.pins_seen.get((pin[0], pin[2])),
                        instance.received_at) for pin in route.all_pins()):
                break
        else:
            raise LedgerError(f"study pins of {instance.study_instance_uid} kept changing"
                              f" while {instance.sop_instance_uid} was routed")
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
        if route.variants:
            _write_variant_deliveries(connection, instance_id, now, route, variants)
            return instance_id, route
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


def _write_variant_deliveries(connection: Connection, instance_id: int, now: float,
                              route: Placement, variants: Sequence[NewVariant]) -> None:
    """The deliveries of a placement some of whose destinations get edited bytes, with the
    variants they send. A destination whose variant was not made is an error (never sent
    as received instead)."""
    made = {variant.rule: variant for variant in variants}
    rule_of = dict(route.variants)
    variant_ids: dict[str, int] = {}
    for rule in dict.fromkeys(rule_of.values()):
        if rule not in made:
            raise LedgerError(f"the edited variant of rule {rule} was not made")
        variant = made[rule]
        variant_ids[rule] = int(connection.execute(
            "INSERT INTO instance_variants(instance_id, rule, spool_path, size, edits)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (instance_id, rule, variant.spool_path, variant.size, variant.edits_json),
        ).fetchone()[0])
        if variant.deidentified is not None:
            connection.execute(
                "INSERT INTO variant_deidentifications(variant_id, method, sop_instance_uid,"
                " held_back) VALUES (?, ?, ?, ?)",
                (variant_ids[rule], variant.deidentified, variant.sop_instance_uid,
                 variant.held_back))
    for role, names in (("route", route.destinations), ("mirror", route.mirrors)):
        for name in names:
            # A held-back copy's destinations get nothing: failed at once, with the reason.
            held_back = made[rule_of[name]].held_back if name in rule_of else None
            delivery_id = int(connection.execute(
                "INSERT INTO deliveries(instance_id, endpoint, role, state, last_error,"
                " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (instance_id, name, role, "pending" if held_back is None else "failed",
                 held_back, now, now, now)).fetchone()[0])
            if name in rule_of:
                connection.execute(
                    "INSERT INTO delivery_variants(delivery_id, variant_id) VALUES (?, ?)",
                    (delivery_id, variant_ids[rule_of[name]]))
