"""The ledger: every received instance, its deliveries and the study pins, in SQLite.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed transaction is on disk. The
receiver commits one instance row plus one delivery row per destination in a single
transaction before it answers success; the dispatcher reads due deliveries from here and
writes their outcomes back, so a restart (even after ``kill -9``) resumes every pending one.

Each thread gets its own connection; SQLite serialises writers (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dde.delivery.states import DeliveryState, check_transition

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    patient_id TEXT,
    accession_number TEXT,
    modality TEXT,
    calling_aet TEXT NOT NULL,
    called_aet TEXT NOT NULL,
    source_ip TEXT,
    rule TEXT NOT NULL,
    size INTEGER NOT NULL,
    spool_path TEXT,
    received_at REAL NOT NULL,
    spool_removed_at REAL
);
CREATE INDEX IF NOT EXISTS instances_sop ON instances(sop_instance_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_instance_uid);
CREATE INDEX IF NOT EXISTS instances_spooled ON instances(id) WHERE spool_path IS NOT NULL;
CREATE INDEX IF NOT EXISTS instances_patient ON instances(patient_id);
CREATE INDEX IF NOT EXISTS instances_accession ON instances(accession_number);
CREATE INDEX IF NOT EXISTS instances_received ON instances(received_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    endpoint TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('route', 'mirror')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries(endpoint, state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS deliveries_instance ON deliveries(instance_id);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, endpoint);
CREATE INDEX IF NOT EXISTS deliveries_delivered ON deliveries(delivered_at)
    WHERE delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    endpoint TEXT,
    target TEXT,
    count INTEGER NOT NULL DEFAULT 0,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS endpoint_status (
    endpoint TEXT PRIMARY KEY,
    health TEXT NOT NULL,
    breaker TEXT NOT NULL,
    down_since REAL,
    last_error TEXT,
    load INTEGER,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_pins (
    study_instance_uid TEXT NOT NULL,
    grp TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    pinned_at REAL NOT NULL,
    PRIMARY KEY (study_instance_uid, grp)
);
"""


class LedgerError(Exception):
    """The ledger cannot be opened or written; the message says why."""


class LedgerLocked(LedgerError):
    """Another process holds a lock on the ledger (it did not free it within the open
    timeout): another router on the same state folder, or a tool with a transaction open."""


class LedgerCorrupt(LedgerError):
    """The ledger file is not a database, or ``PRAGMA quick_check`` finds damage. The file
    is left exactly as it is: nothing is reset."""


_LOCKED_CODES = {"SQLITE_BUSY", "SQLITE_LOCKED"}
_CORRUPT_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def _open_error(path: Path, exc: sqlite3.Error) -> LedgerError:
    """The :class:`LedgerError` for a failure to open: locked, corrupt, or other."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")

    def is_one_of(codes: set[str]) -> bool:  # extended codes: SQLITE_BUSY_RECOVERY, …
        return any(name == code or name.startswith(code + "_") for code in codes)

    if is_one_of(_LOCKED_CODES) or "database is locked" in str(exc):
        return LedgerLocked(f"{path}: cannot open the ledger: it is locked by another process "
                            f"({exc}); is another router running with this --home?")
    if is_one_of(_CORRUPT_CODES):
        return LedgerCorrupt(f"{path}: cannot open the ledger: it is damaged ({exc}); it "
                             f"was left as it is - restore it from a backup or move it aside")
    return LedgerError(f"{path}: cannot open the ledger: {exc}")


@dataclass(frozen=True)
class NewInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    calling_aet: str
    called_aet: str
    source_ip: str | None
    spool_path: str
    size: int
    received_at: float


@dataclass(frozen=True)
class Route:
    """Where one instance goes, as the router decided inside the ingest transaction."""

    rule: str
    destinations: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    pin: tuple[str, str, str] | None = None
    """(study_instance_uid, endpoint, group) to persist when this route created a pin."""
    pins: tuple[tuple[str, str, str], ...] = ()
    """More pins of the same form (one per group the rules routed through)."""
    discard: bool = False
    reason: str = ""

    def all_pins(self) -> tuple[tuple[str, str, str], ...]:
        return ((self.pin,) if self.pin is not None else ()) + self.pins


@dataclass(frozen=True)
class QueuedDelivery:
    id: int
    instance_id: int
    endpoint: str
    attempts: int
    spool_path: str | None
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    received_at: float | None = None


@dataclass(frozen=True)
class DeliveryOutcome:
    delivery_id: int
    state: DeliveryState
    error: str | None = None
    counts_as_attempt: bool = True
    next_attempt_at: float = 0.0


@dataclass
class DeliveryRecord:
    id: int
    endpoint: str
    role: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    delivered_at: float | None


@dataclass
class InstanceRecord:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    calling_aet: str
    called_aet: str
    source_ip: str | None
    rule: str
    size: int
    received_at: float
    spool_path: str | None
    deliveries: list[DeliveryRecord] = field(default_factory=list)


@dataclass
class InstanceSummary:
    """One row of a ledger search: the instance's identifiers and its deliveries."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    calling_aet: str
    rule: str
    size: int
    received_at: float
    deliveries: list[DeliveryRecord] = field(default_factory=list)


@dataclass(frozen=True)
class QueueSummary:
    """Pending deliveries of one endpoint: how many, and when the oldest was queued."""

    pending: int
    oldest_created_at: float | None


@dataclass
class QueueEntry:
    delivery_id: int
    endpoint: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: float
    created_at: float
    instance_id: int
    sop_instance_uid: str


class IngestView:
    """What the routing decision may read inside the ingest transaction."""

    def __init__(self, connection: sqlite3.Connection) -> None:
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
        return _queued_counts(self._connection)


def _queued_counts(connection: sqlite3.Connection) -> dict[str, int]:
    rows = connection.execute(
        "SELECT endpoint, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY endpoint"
    ).fetchall()
    return {str(endpoint): int(count) for endpoint, count in rows}


def _check_at_open(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged ledger (``PRAGMA quick_check``) or one another process holds a lock
    on (a write transaction begun and rolled back), before anything is written to it."""
    problems = [str(row[0]) for row in connection.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        shown = "; ".join(problems[:3]) + (" …" if len(problems) > 3 else "")
        raise LedgerCorrupt(f"{path}: cannot open the ledger: it is damaged (quick_check: "
                            f"{shown}); it was left as it is - restore it from a backup or "
                            f"move it aside")
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("ROLLBACK")


_ALL_DELIVERED = ("NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.instance_id = i.id"
                  " AND (d.state != 'delivered' OR d.delivered_at > ?))")


class Ledger:
    def __init__(self, path: Path, open_timeout: float = 5.0) -> None:
        """Open (or create) the ledger. A lock held longer than ``open_timeout`` seconds
        raises :class:`LedgerLocked`; a damaged file :class:`LedgerCorrupt`."""
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        connection = self._connect(open_timeout)
        try:
            _check_at_open(connection, path)
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.executescript(_SCHEMA)
            row = connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                connection.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise LedgerError(
                    f"{path}: ledger schema {row[0]} is newer than this version of dde "
                    f"understands ({SCHEMA_VERSION})"
                )
        except sqlite3.DatabaseError as exc:
            raise _open_error(path, exc) from None

    # -- connections -------------------------------------------------------------------
    def _connect(self, timeout: float = BUSY_TIMEOUT_MS / 1000) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        try:
            connection = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise _open_error(self.path, exc) from None
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        else:
            connection.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                try:
                    connection.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    # -- receiving ---------------------------------------------------------------------
    def ingest(self, instance: NewInstance,
               decide: Callable[[IngestView], Route]) -> tuple[int, Route]:
        """Commit one instance and its deliveries atomically; return its id and route.

        ``decide`` runs inside the transaction, so pins and queue counts it reads cannot
        change before the rows it implies are written.
        """
        with self._transaction() as connection:
            route = decide(IngestView(connection))
            for pin in route.all_pins():
                connection.execute(
                    "INSERT OR REPLACE INTO study_pins"
                    "(study_instance_uid, endpoint, grp, pinned_at) VALUES (?, ?, ?, ?)",
                    (*pin, instance.received_at),
                )
            cursor = connection.execute(
                "INSERT INTO instances(sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
                " study_instance_uid, series_instance_uid, patient_id, accession_number,"
                " modality, calling_aet, called_aet, source_ip, rule, size, spool_path,"
                " received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    instance.sop_instance_uid, instance.sop_class_uid,
                    instance.transfer_syntax_uid, instance.study_instance_uid,
                    instance.series_instance_uid, instance.patient_id,
                    instance.accession_number, instance.modality, instance.calling_aet,
                    instance.called_aet, instance.source_ip, route.rule, instance.size,
                    instance.spool_path, instance.received_at,
                ),
            )
            instance_id = int(cursor.lastrowid or 0)
            now = instance.received_at
            connection.executemany(
                "INSERT INTO deliveries(instance_id, endpoint, role, state, next_attempt_at,"
                " created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                [(instance_id, name, "route", now, now, now) for name in route.destinations]
                + [(instance_id, name, "mirror", now, now, now) for name in route.mirrors],
            )
        return instance_id, route

    # -- dispatching -------------------------------------------------------------------
    def due(self, endpoint: str, now: float, limit: int) -> list[QueuedDelivery]:
        rows = self._connect().execute(
            "SELECT d.id, d.instance_id, d.endpoint, d.attempts, i.spool_path,"
            " i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.received_at"
            " FROM deliveries d JOIN instances i ON i.id = d.instance_id"
            " WHERE d.endpoint = ? AND d.state = 'pending' AND d.next_attempt_at <= ?"
            " ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (endpoint, now, limit),
        ).fetchall()
        return [QueuedDelivery(*row) for row in rows]

    def next_due_at(self, endpoint: str) -> float | None:
        row = self._connect().execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE endpoint = ? AND state = 'pending'",
            (endpoint,),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def record_outcomes(self, outcomes: Sequence[DeliveryOutcome],
                        now: float | None = None) -> None:
        if not outcomes:
            return
        now = time.time() if now is None else now
        with self._transaction() as connection:
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
        with self._transaction() as connection:
            connection.executemany(
                "UPDATE deliveries SET last_error = ?, updated_at = ?"
                " WHERE id = ? AND state = 'pending'",
                [(error, time.time(), i) for i in ids],
            )

    def note_endpoint_error(self, endpoint: str, error: str) -> None:
        """Record an endpoint-level error on every delivery waiting for ``endpoint`` (all
        wait for the same reason, not only the batch in hand), without spending attempts."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE deliveries SET last_error = ?, updated_at = ?"
                " WHERE endpoint = ? AND state = 'pending'"
                " AND (last_error IS NULL OR last_error != ?)",
                (error, time.time(), endpoint, error),
            )

    def releasable_spool_files(self, older_than: float, limit: int = 500,
                               since: float | None = None) -> list[tuple[int, str]]:
        """Spool files whose every delivery is delivered, the last one before ``older_than``.

        ``since``: look only at instances with a delivery delivered after it (indexed), so
        that a large queue of pending deliveries is not read again at every clean-up; None
        looks at every instance that still has a spool file (instances without any delivery
        included)."""
        if since is None:
            rows = self._connect().execute(
                "SELECT i.id, i.spool_path FROM instances i WHERE i.spool_path IS NOT NULL"
                f" AND {_ALL_DELIVERED} LIMIT ?", (older_than, limit)).fetchall()
        else:
            rows = self._connect().execute(
                "SELECT i.id, i.spool_path FROM instances i WHERE i.id IN ("
                "   SELECT d0.instance_id FROM deliveries d0"
                "   WHERE d0.delivered_at > ? AND d0.delivered_at <= ?)"
                f" AND i.spool_path IS NOT NULL AND {_ALL_DELIVERED} LIMIT ?",
                (since, older_than, older_than, limit)).fetchall()
        return [(int(a), str(b)) for a, b in rows]

    def mark_spool_removed(self, instance_ids: Sequence[int]) -> None:
        if not instance_ids:
            return
        now = time.time()
        with self._transaction() as connection:
            connection.executemany(
                "UPDATE instances SET spool_path = NULL, spool_removed_at = ? WHERE id = ?",
                [(now, i) for i in instance_ids],
            )

    def spool_paths_in_use(self) -> set[str]:
        rows = self._connect().execute(
            "SELECT spool_path FROM instances WHERE spool_path IS NOT NULL"
        ).fetchall()
        return {str(r[0]) for r in rows}

    # -- operators ---------------------------------------------------------------------
    def queued_counts(self) -> dict[str, int]:
        return _queued_counts(self._connect())

    def where(self, sop_instance_uid: str) -> list[InstanceRecord]:
        connection = self._connect()
        rows = connection.execute(
            "SELECT id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
            " study_instance_uid, calling_aet, called_aet, source_ip, rule, size,"
            " received_at, spool_path FROM instances WHERE sop_instance_uid = ? ORDER BY id",
            (sop_instance_uid,),
        ).fetchall()
        records = [InstanceRecord(*row) for row in rows]
        for record in records:
            deliveries = connection.execute(
                "SELECT id, endpoint, role, state, attempts, last_error, next_attempt_at,"
                " created_at, updated_at, delivered_at FROM deliveries WHERE instance_id = ?"
                " ORDER BY role DESC, id",
                (record.id,),
            ).fetchall()
            record.deliveries = [DeliveryRecord(*d) for d in deliveries]
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
        connection = self._connect()
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
                "SELECT instance_id, id, endpoint, role, state, attempts, last_error,"
                " next_attempt_at, created_at, updated_at, delivered_at FROM deliveries"
                f" WHERE instance_id IN ({marks}) ORDER BY role DESC, id",
                tuple(by_id),
            ).fetchall()
            for instance_id, *delivery in deliveries:
                by_id[int(instance_id)].deliveries.append(DeliveryRecord(*delivery))
        return total, found

    def queue_summary(self) -> dict[str, QueueSummary]:
        """Per endpoint with pending deliveries: their count and the oldest's queue time."""
        rows = self._connect().execute(
            "SELECT endpoint, COUNT(*), MIN(created_at) FROM deliveries"
            " WHERE state = 'pending' GROUP BY endpoint"
        ).fetchall()
        return {str(endpoint): QueueSummary(int(count), None if oldest is None else float(oldest))
                for endpoint, count, oldest in rows}

    def received_per_minute(self, since: float) -> dict[int, int]:
        """Instances received per minute since ``since``: {minute (epoch // 60): count}."""
        rows = self._connect().execute(
            "SELECT CAST(received_at / 60 AS INTEGER) AS minute, COUNT(*) FROM instances"
            " WHERE received_at >= ? GROUP BY minute",
            (since,),
        ).fetchall()
        return {int(minute): int(count) for minute, count in rows}

    def delivered_per_minute(self, since: float) -> dict[str, dict[int, int]]:
        """Deliveries completed per endpoint and minute since ``since``."""
        rows = self._connect().execute(
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
        rows = self._connect().execute(
            "SELECT d.id, d.endpoint, d.state, d.attempts, d.last_error, d.next_attempt_at,"
            " d.created_at, d.instance_id, i.sop_instance_uid FROM deliveries d"
            f" JOIN instances i ON i.id = d.instance_id WHERE d.state IN ({marks})"
            " ORDER BY d.state, d.endpoint, d.id LIMIT ?",
            (*[s.value for s in states], limit),
        ).fetchall()
        return [QueueEntry(*row) for row in rows]

    def state_counts(self) -> dict[str, dict[str, int]]:
        rows = self._connect().execute(
            "SELECT endpoint, state, COUNT(*) FROM deliveries GROUP BY endpoint, state"
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for endpoint, state, count in rows:
            counts.setdefault(str(endpoint), {})[str(state)] = int(count)
        return counts

    def retry(self, delivery_id: int) -> DeliveryState | None:
        """Make one failed delivery pending again, due now; return its previous state."""
        with self._transaction() as connection:
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
        with self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " updated_at = ? WHERE state = 'failed'",
                (now, now),
            )
            return cursor.rowcount

    # -- moves (failover, forced removal) ------------------------------------------------
    def pinned_studies_with_pending(self, endpoint: str) -> list[tuple[str, str]]:
        """(study, group) of the studies pinned to ``endpoint`` with deliveries still due."""
        rows = self._connect().execute(
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
        with self._transaction() as connection:
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
            moved = cursor.rowcount
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
        with self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE deliveries SET endpoint = ?, state = 'pending', next_attempt_at = ?,"
                " attempts = 0, updated_at = ?, last_error = ? WHERE endpoint = ?"
                " AND state IN ('pending', 'failed') AND NOT EXISTS (SELECT 1 FROM deliveries o"
                "   WHERE o.instance_id = deliveries.instance_id AND o.endpoint = ?)",
                (target, now, now, f"redirected from {source}: {reason}", source, target),
            )
            moved = cursor.rowcount
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

    def waiting_for(self, sop_instance_uid: str, endpoint: str) -> bool:
        """Is a delivery of this instance to ``endpoint`` still pending?"""
        row = self._connect().execute(
            "SELECT 1 FROM deliveries d JOIN instances i ON i.id = d.instance_id"
            " WHERE i.sop_instance_uid = ? AND d.endpoint = ? AND d.state = 'pending' LIMIT 1",
            (sop_instance_uid, endpoint),
        ).fetchone()
        return row is not None

    def waiting_count(self, endpoint: str) -> int:
        row = self._connect().execute(
            "SELECT COUNT(*) FROM deliveries WHERE endpoint = ?"
            " AND state IN ('pending', 'failed')",
            (endpoint,),
        ).fetchone()
        return int(row[0])

    def add_event(self, kind: str, endpoint: str | None, detail: str,
                  target: str | None = None, count: int = 0) -> None:
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO events(at, kind, endpoint, target, count, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), kind, endpoint, target, count, detail),
            )

    def events(self, limit: int = 100) -> list[tuple[Any, ...]]:
        return list(self._connect().execute(
            "SELECT id, at, kind, endpoint, target, count, detail FROM events"
            " ORDER BY id DESC LIMIT ?", (limit,)).fetchall())

    # -- endpoint status, published by the running router for the CLI --------------------
    def publish_status(self, rows: Sequence[tuple[str, str, str, float | None, str | None,
                                                  int | None]]) -> None:
        now = time.time()
        with self._transaction() as connection:
            connection.execute("DELETE FROM endpoint_status")
            connection.executemany(
                "INSERT INTO endpoint_status(endpoint, health, breaker, down_since, last_error,"
                " load, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*row, now) for row in rows],
            )

    def delivered_since(self, since: float) -> dict[str, int]:
        """Deliveries made after ``since`` (epoch seconds), per endpoint."""
        rows = self._connect().execute(
            "SELECT endpoint, COUNT(*) FROM deliveries WHERE delivered_at > ?"
            " GROUP BY endpoint", (since,)).fetchall()
        return {str(endpoint): int(count) for endpoint, count in rows}

    def endpoint_status(self) -> dict[str, dict[str, Any]]:
        rows = self._connect().execute(
            "SELECT endpoint, health, breaker, down_since, last_error, load, updated_at"
            " FROM endpoint_status").fetchall()
        return {str(r[0]): {"health": r[1], "breaker": r[2], "down_since": r[3],
                            "last_error": r[4], "load": r[5], "updated_at": r[6]} for r in rows}

    def pin_for(self, study_instance_uid: str, group: str | None = None) -> str | None:
        return self.view().pin_for(study_instance_uid, group)

    def view(self) -> IngestView:
        """A read-only view of pins and queue depths (for explaining a decision)."""
        return IngestView(self._connect())

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only query for tests and diagnostics."""
        return list(self._connect().execute(sql, parameters).fetchall())
