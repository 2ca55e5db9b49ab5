"""Storage commitment in the ledger: the transactions the router asked a destination to
commit to (``commitments``: one per N-ACTION, i.e. per study of a delivered batch) and
each delivery's part in them (``delivery_commitments``), both created at every open.

States: ``pending`` (asked, no report yet) → ``committed`` | ``failed`` (with the reason).
A transaction is committed when the destination committed to every instance in it; a
delivery is committed when its instance was in the report's Referenced SOP Sequence. A
delivery whose instance failed (in the Failed SOP Sequence, missing from the report, the
N-ACTION refused, or no report within the timeout) is *re-queued*: delivered → pending,
due after the caller's ``backoff`` (the retry policy's, by the attempts spent), the reason as
its last error; once ``max_attempts`` are spent it is failed instead. Its spool file stays
while any commitment of the instance is pending (:mod:`dde.store.spool_index`), so a
re-queued delivery has its bytes.

The commitment rows are written in the transaction that records the deliveries as
delivered (:meth:`~dde.store.queue.DeliveryQueue.record_outcomes`), before the N-ACTION is
sent: a report can never come for a transaction the ledger does not know, and no spool
file is released between the delivery and the request. A report may come to any process
of any node sharing the ledger (the receiver processes write it too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from dde.dicom.commitment import CommitmentReport, describe_failure
from dde.store.database import Backend, Connection, database_errors_as_ledger_errors
from dde.store.states import DeliveryState, check_commitment_failure


class CommitmentState(StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"
    FAILED = "failed"


Backoff = Callable[[int], float]
"""Seconds before a re-queued delivery is due, by the attempts it has spent."""


@dataclass(frozen=True)
class CommitmentItem:
    delivery_id: int
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class NewCommitment:
    """One N-ACTION about to be sent: its transaction and the deliveries it covers."""

    transaction_uid: str
    endpoint: str
    items: tuple[CommitmentItem, ...]


@dataclass(frozen=True)
class DeliveryCommitment:
    """The latest commitment of one delivery, as ``dde where`` shows it."""

    state: CommitmentState
    reason: str | None
    transaction_uid: str
    endpoint: str
    """Whom it was asked of (a delivery moved to another endpoint keeps its history)."""


@dataclass
class CommitmentResult:
    """What recording a report (or a failure) did."""

    endpoint: str | None = None
    """None: the transaction is unknown (or was resolved before)."""
    committed: int = 0
    failed: int = 0
    requeued: list[int] = field(default_factory=list)
    given_up: list[int] = field(default_factory=list)


def write_requests(connection: Connection, requests: Sequence[NewCommitment],
                   now: float) -> None:
    """Inside the caller's transaction (the outcomes'): the pending rows of ``requests``."""
    for request in requests:
        connection.execute(
            "INSERT INTO commitments(transaction_uid, endpoint, requested_at, state)"
            " VALUES (?, ?, ?, 'pending')", (request.transaction_uid, request.endpoint, now))
        connection.executemany(
            "INSERT INTO delivery_commitments(delivery_id, transaction_uid, sop_instance_uid,"
            " state, requested_at) VALUES (?, ?, ?, 'pending', ?)",
            [(item.delivery_id, request.transaction_uid, item.sop_instance_uid, now)
             for item in sorted(request.items, key=lambda i: i.delivery_id)])


def latest_commitments(connection: Connection,
                       delivery_ids: Iterable[int]) -> dict[int, DeliveryCommitment]:
    """The latest commitment of each of ``delivery_ids`` that has one (``dde where``), and
    whom it was asked of."""
    ids = sorted(set(delivery_ids))
    if not ids:
        return {}
    rows = connection.execute(
        "SELECT d.delivery_id, d.state, d.reason, d.transaction_uid, c.endpoint"
        " FROM delivery_commitments d JOIN commitments c"
        " ON c.transaction_uid = d.transaction_uid"
        f" WHERE d.delivery_id IN ({', '.join('?' * len(ids))})"
        " ORDER BY d.requested_at, d.transaction_uid", ids).fetchall()
    return {int(d): DeliveryCommitment(CommitmentState(s), r, str(t), str(e))
            for d, s, r, t, e in rows}


@database_errors_as_ledger_errors
class CommitmentBook:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def report(self, report: CommitmentReport, max_attempts: int, now: float | None = None,
               backoff: Backoff | None = None) -> CommitmentResult:
        """Record an N-EVENT-REPORT: each delivery of the transaction committed or failed
        (a failed one re-queued); an unknown or already resolved transaction changes
        nothing (``endpoint`` None)."""
        now = time.time() if now is None else now
        committed = {r.sop_instance_uid for r in report.committed}
        failed = {f.reference.sop_instance_uid: describe_failure(f.reason)
                  for f in report.failed}
        with self._database.transaction() as connection:
            endpoint = self._pending_endpoint(connection, report.transaction_uid)
            if endpoint is None:
                return CommitmentResult()
            result = CommitmentResult(endpoint)
            failures: dict[int, str] = {}
            for delivery_id, sop_instance_uid in connection.execute(
                    "SELECT delivery_id, sop_instance_uid FROM delivery_commitments"
                    " WHERE transaction_uid = ? AND state = 'pending' ORDER BY delivery_id",
                    (report.transaction_uid,)).fetchall():
                uid = str(sop_instance_uid)
                if uid in failed:
                    failures[int(delivery_id)] = f"the destination did not commit: {failed[uid]}"
                elif uid in committed:
                    self._resolve(connection, int(delivery_id), report.transaction_uid,
                                  CommitmentState.COMMITTED, None, now)
                    result.committed += 1
                else:
                    failures[int(delivery_id)] = "the commitment report does not name it"
            self._fail(connection, report.transaction_uid, failures, max_attempts, now,
                       result, backoff)
            self._close(connection, report.transaction_uid,
                        next(iter(failures.values()), None), now)
        return result

    def fail(self, transaction_uid: str, reason: str, max_attempts: int,
             now: float | None = None, backoff: Backoff | None = None) -> CommitmentResult:
        """The whole transaction failed (the N-ACTION refused or unanswerable): its pending
        deliveries are re-queued with ``reason``."""
        now = time.time() if now is None else now
        with self._database.transaction() as connection:
            endpoint = self._pending_endpoint(connection, transaction_uid)
            if endpoint is None:
                return CommitmentResult()
            result = CommitmentResult(endpoint)
            ids = [int(row[0]) for row in connection.execute(
                "SELECT delivery_id FROM delivery_commitments WHERE transaction_uid = ?"
                " AND state = 'pending' ORDER BY delivery_id", (transaction_uid,)).fetchall()]
            self._fail(connection, transaction_uid, dict.fromkeys(ids, reason), max_attempts,
                       now, result, backoff)
            self._close(connection, transaction_uid, reason, now)
        return result

    def expired(self, requested_before: float) -> list[str]:
        """Transactions still pending that were requested before ``requested_before``."""
        rows = self._database.connection().execute(
            "SELECT transaction_uid FROM commitments WHERE state = 'pending'"
            " AND requested_at < ? ORDER BY requested_at", (requested_before,)).fetchall()
        return [str(row[0]) for row in rows]

    def latest(self, delivery_ids: Iterable[int]) -> dict[int, DeliveryCommitment]:
        """The latest commitment of each of ``delivery_ids`` that has one."""
        return latest_commitments(self._database.connection(), delivery_ids)

    def history(self, delivery_id: int) -> list[DeliveryCommitment]:
        """Every commitment of one delivery, oldest first."""
        rows = self._database.connection().execute(
            "SELECT d.state, d.reason, d.transaction_uid, c.endpoint"
            " FROM delivery_commitments d JOIN commitments c"
            " ON c.transaction_uid = d.transaction_uid"
            " WHERE d.delivery_id = ? ORDER BY d.requested_at, d.transaction_uid",
            (delivery_id,)).fetchall()
        return [DeliveryCommitment(CommitmentState(s), r, str(t), str(e))
                for s, r, t, e in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """Transactions per endpoint and state (the metric)."""
        rows = self._database.connection().execute(
            "SELECT endpoint, state, COUNT(*) FROM commitments GROUP BY endpoint, state"
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for endpoint, state, count in rows:
            counts.setdefault(str(endpoint), {})[str(state)] = int(count)
        return counts

    @staticmethod
    def _pending_endpoint(connection: Connection, transaction_uid: str) -> str | None:
        row = connection.execute(
            "SELECT endpoint FROM commitments WHERE transaction_uid = ? AND state = 'pending'",
            (transaction_uid,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _resolve(connection: Connection, delivery_id: int, transaction_uid: str,
                 state: CommitmentState, reason: str | None, now: float) -> None:
        connection.execute(
            "UPDATE delivery_commitments SET state = ?, reason = ?, resolved_at = ?"
            " WHERE delivery_id = ? AND transaction_uid = ?",
            (state.value, reason, now, delivery_id, transaction_uid))

    def _fail(self, connection: Connection, transaction_uid: str, failures: dict[int, str],
              max_attempts: int, now: float, result: CommitmentResult,
              backoff: Backoff | None) -> None:
        """Mark ``failures`` ({delivery id: reason}) failed and re-queue their deliveries
        (in id order, each delivery row before anything else of it, as the queue does)."""
        # One draw per attempt count: deliveries failed together are due together (and are
        # sent again in one batch, under one new transaction).
        delays: dict[int, float] = {}
        for delivery_id in sorted(failures):
            reason = failures[delivery_id]
            self._resolve(connection, delivery_id, transaction_uid, CommitmentState.FAILED,
                          reason, now)
            result.failed += 1
            row = connection.execute("SELECT state, attempts FROM deliveries WHERE id = ?",
                                     (delivery_id,)).fetchone()
            if row is None or DeliveryState(row[0]) is not DeliveryState.DELIVERED:
                continue  # already queued again (or gone): nothing to undo
            attempts = int(row[1])
            give_up = attempts >= max_attempts
            state = DeliveryState.FAILED if give_up else DeliveryState.PENDING
            check_commitment_failure(DeliveryState.DELIVERED, state)
            if backoff is not None and not give_up and attempts not in delays:
                delays[attempts] = backoff(attempts)
            due = now + delays.get(attempts, 0.0)
            connection.execute(
                "UPDATE deliveries SET state = ?, last_error = ?, next_attempt_at = ?,"
                " updated_at = ?, delivered_at = NULL WHERE id = ?",
                (state.value, f"storage commitment failed: {reason}", due, now, delivery_id))
            (result.given_up if give_up else result.requeued).append(delivery_id)

    @staticmethod
    def _close(connection: Connection, transaction_uid: str, failure: str | None,
               now: float) -> None:
        state = CommitmentState.COMMITTED if failure is None else CommitmentState.FAILED
        connection.execute(
            "UPDATE commitments SET state = ?, reason = ?, resolved_at = ?"
            " WHERE transaction_uid = ?", (state.value, failure, now, transaction_uid))
