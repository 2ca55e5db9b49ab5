"""The delivery queue: what is due for an endpoint, and the outcomes of sending it.

Outcomes follow the legal transitions of :mod:`dde.store.states`; a late outcome for a
delivered delivery changes nothing (delivered is final).

Several workers deliver to one endpoint: each *claims* the deliveries it is about to send
(a lease with an owner and an expiry, in ``delivery_claims``), so two workers never hold
the same delivery, even on different nodes of one PostgreSQL ledger, where claims take no
writer lock (:meth:`DeliveryQueue.claim` says how they guard themselves). A claim ends with
the outcome, with :meth:`DeliveryQueue.release`, when it expires, or at once for all on
:meth:`DeliveryQueue.release_all_claims` (the dispatcher's start: after a crash no claim
blocks anything). Claims, renewals, releases and outcomes are committed without waiting
for the disk (``durable=False``): a lost one only means a second send, and the spool
janitor's durable commit comes before any file is removed. A delivery the destination
never answered is *suspect* (``delivery_suspects``): it is claimed only by the endpoint's
suspect lane, one at a time, until it is delivered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from dde.store.commitments import NewCommitment, write_requests
from dde.store.database import Backend, Connection, database_errors_as_ledger_errors
from dde.store.intake import VARIANT_JOIN, queued_counts
from dde.store.records import DeliveryOutcome, QueuedDelivery
from dde.store.states import DeliveryState, check_transition

_QUEUED = ("SELECT d.id, d.instance_id, d.endpoint, d.attempts,"
           " CASE WHEN dv.variant_id IS NULL THEN i.spool_path ELSE v.spool_path END,"
           " i.sop_class_uid, COALESCE(x.sop_instance_uid, i.sop_instance_uid),"
           " i.transfer_syntax_uid, i.received_at, i.study_instance_uid, x.held_back ")
"""The columns of a :class:`QueuedDelivery`, in its field order (``d``: deliveries,
``i``: instances, ``v``: the edited variant a delivery sends, when it sends one: then its
spool file, never the original's, and, de-identified (``x``), its own SOP Instance UID;
a held-back one has no file and its reason)."""
_LOCK_CANDIDATES = {"postgresql": " FOR UPDATE OF d SKIP LOCKED"}
"""What the claim's candidate query ends with, per dialect: PostgreSQL locks the chosen
delivery rows and passes over those another claimer holds. SQLite needs nothing (its one
writer at a time claims alone)."""


@database_errors_as_ledger_errors
class DeliveryQueue:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def due(self, endpoint: str, now: float, limit: int) -> list[QueuedDelivery]:
        rows = self._database.connection().execute(
            _QUEUED + "FROM deliveries d JOIN instances i ON i.id = d.instance_id" + VARIANT_JOIN +
            " WHERE d.endpoint = ? AND d.state = 'pending' AND d.next_attempt_at <= ?"
            " ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (endpoint, now, limit),
        ).fetchall()
        return [QueuedDelivery(*row) for row in rows]

    def claim(self, endpoint: str, owner: str, now: float, limit: int, lease: float, *,
              suspects: bool = False,
              taken_over: list[int] | None = None) -> list[QueuedDelivery]:
        """Claim up to ``limit`` due deliveries of ``endpoint`` no one else holds, for
        ``lease`` seconds: the plain ones in queue order, or (``suspects``) the suspect ones.
        ``taken_over`` gets the ids of those whose previous claim (another owner's) had
        expired rather than ended: a node died holding them, so they may be sent twice.

        On PostgreSQL a claim does not take the writer lock: the workers of every node claim
        at once. The candidates are locked ``FOR UPDATE SKIP LOCKED`` (a candidate another
        claimer holds now is passed over, not waited for), and the claim rows are written by
        :meth:`_take`, which writes none over a live claim: under READ COMMITTED the
        ``NOT EXISTS`` of the candidate query is judged on the statement's snapshot, so a
        claim committed just before the row lock was won is seen only by the insert.

        Deadlocks: a claim waits only for claim rows (never for a delivery row), and only
        for those of deliveries it has locked itself; the serialised writers lock a
        delivery's claim row after its delivery row (outcomes, moves) or claim rows alone in
        id order (renew, release), as :meth:`_take` does, so no cycle forms. Should
        PostgreSQL report one all the same, the claim leaves as
        :class:`~dde.store.errors.LedgerError`, which the worker survives (it retries)."""
        if suspects:
            source = ("FROM delivery_suspects s JOIN deliveries d ON d.id = s.delivery_id"
                      " JOIN instances i ON i.id = d.instance_id" + VARIANT_JOIN + "WHERE")
        else:
            source = ("FROM deliveries d JOIN instances i ON i.id = d.instance_id" + VARIANT_JOIN +
                      "WHERE NOT EXISTS (SELECT 1 FROM delivery_suspects s"
                      " WHERE s.delivery_id = d.id) AND")
        query = (_QUEUED + source +
                 " d.endpoint = ? AND d.state = 'pending' AND d.next_attempt_at <= ?"
                 " AND NOT EXISTS (SELECT 1 FROM delivery_claims c"
                 " WHERE c.delivery_id = d.id AND c.expires_at > ?)"
                 " ORDER BY d.next_attempt_at, d.id LIMIT ?")
        parameters = (endpoint, now, now, limit)
        # A plain read first: an idle worker's look opens no write transaction.
        if not self._database.connection().execute(query, parameters).fetchone():
            return []
        locking = _LOCK_CANDIDATES.get(self._database.dialect, "")
        with self._database.transaction(durable=False, serialised=False) as connection:
            rows = connection.execute(query + locking, parameters).fetchall()
            ids = [int(row[0]) for row in rows]
            expired = set(self._claimed_by_others(connection, owner, ids)) if (
                taken_over is not None and ids) else set()
            won = self._take(connection, ids, owner, now, now + lease)
        if taken_over is not None:
            taken_over.extend(i for i in ids if i in won and i in expired)
        return [QueuedDelivery(*row) for row in rows if int(row[0]) in won]

    @staticmethod
    def _claimed_by_others(connection: Connection, owner: str, ids: list[int]) -> list[int]:
        """Which of ``ids`` another owner's claim row stands on (the candidates have no live
        claim: those are expired ones, left behind)."""
        return [int(found[0]) for found in connection.execute(
            "SELECT delivery_id FROM delivery_claims WHERE owner != ? AND delivery_id"
            f" IN ({', '.join('?' * len(ids))})", (owner, *ids)).fetchall()]

    @staticmethod
    def _take(connection: Connection, ids: Sequence[int], owner: str, now: float,
              until: float) -> set[int]:
        """Write ``owner``'s claims on ``ids`` until ``until``, except over a claim still
        live at ``now`` (another claimer's, committed after the candidates were chosen);
        the ids claimed. Rows in id order: the order every claim-row writer keeps."""
        if not ids:
            return set()
        ordered = sorted(ids)
        rows = connection.execute(
            "INSERT INTO delivery_claims(delivery_id, owner, expires_at) VALUES "
            + ", ".join("(?, ?, ?)" for _ in ordered)
            + " ON CONFLICT(delivery_id) DO UPDATE SET owner = excluded.owner,"
            " expires_at = excluded.expires_at WHERE delivery_claims.expires_at <= ?"
            " RETURNING delivery_id",
            (*(value for i in ordered for value in (i, owner, until)), now),
        ).fetchall()
        return {int(row[0]) for row in rows}

    def renew(self, owner: str, delivery_ids: Iterable[int], until: float) -> None:
        """Extend ``owner``'s claims on ``delivery_ids`` until ``until``.

        Still behind the writer lock: a renewal locks claim rows without their delivery
        rows, which a serialised writer deleting deliveries (a move) locks the other way
        round; the lock keeps the two apart. In id order, so that it and a claim taking
        over expired claims wait for each other in one direction only."""
        with self._database.transaction(durable=False) as connection:
            connection.executemany(
                "UPDATE delivery_claims SET expires_at = ? WHERE delivery_id = ? AND owner = ?",
                [(until, i, owner) for i in sorted(delivery_ids)],
            )

    def release(self, owner: str, delivery_ids: Iterable[int] | None = None) -> None:
        """End ``owner``'s claims (on ``delivery_ids``, or all of them): others may take
        those deliveries at once. Behind the writer lock and in id order, as :meth:`renew`."""
        with self._database.transaction(durable=False) as connection:
            if delivery_ids is None:
                _delete_claims_in_order(connection, "owner = ?", (owner,))
            else:
                connection.executemany(
                    "DELETE FROM delivery_claims WHERE delivery_id = ? AND owner = ?",
                    [(i, owner) for i in sorted(delivery_ids)],
                )

    def release_all_claims(self) -> int:
        """Forget every claim (no worker runs yet: a crash left them); how many."""
        with self._database.transaction() as connection:
            return int(connection.execute("DELETE FROM delivery_claims").rowcount)

    def release_claims_of_node(self, node: str) -> int:
        """Forget the claims of ``node``'s workers (its earlier run: none of them runs
        now), leaving other nodes' alone; how many."""
        prefix = f"{node}/"
        with self._database.transaction() as connection:
            return _delete_claims_in_order(connection, "substr(owner, 1, ?) = ?",
                                           (len(prefix), prefix))

    def claims(self, endpoint: str | None = None) -> dict[int, str]:
        """{delivery id: owner} of the claims held now (of ``endpoint``'s deliveries)."""
        rows = self._database.connection().execute(
            "SELECT c.delivery_id, c.owner FROM delivery_claims c"
            " JOIN deliveries d ON d.id = c.delivery_id"
            " WHERE (CAST(? AS TEXT) IS NULL OR d.endpoint = ?) AND c.expires_at > ?",
            (endpoint, endpoint, time.time()),
        ).fetchall()
        return {int(delivery_id): str(owner) for delivery_id, owner in rows}

    def suspects(self, endpoint: str | None = None) -> dict[int, str | None]:
        """{delivery id: reason} of the suspect deliveries not yet delivered."""
        rows = self._database.connection().execute(
            "SELECT s.delivery_id, s.reason FROM delivery_suspects s"
            " JOIN deliveries d ON d.id = s.delivery_id"
            " WHERE (CAST(? AS TEXT) IS NULL OR d.endpoint = ?) AND d.state != 'delivered'",
            (endpoint, endpoint),
        ).fetchall()
        return {int(delivery_id): reason for delivery_id, reason in rows}

    def next_suspect_due_at(self, endpoint: str) -> float | None:
        row = self._database.connection().execute(
            "SELECT MIN(d.next_attempt_at) FROM delivery_suspects s"
            " JOIN deliveries d ON d.id = s.delivery_id"
            " WHERE d.endpoint = ? AND d.state = 'pending'",
            (endpoint,),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def next_due_at(self, endpoint: str) -> float | None:
        row = self._database.connection().execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE endpoint = ? AND state = 'pending'",
            (endpoint,),
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def record_outcomes(self, outcomes: Sequence[DeliveryOutcome],
                        now: float | None = None,
                        commitments: Sequence[NewCommitment] = ()) -> None:
        """Write ``outcomes``; ``commitments``: the storage commitments about to be asked
        for deliveries delivered here, written pending in the same transaction (see
        :mod:`dde.store.commitments`)."""
        if not outcomes:
            return
        now = time.time() if now is None else now
        # Unsynced: an outcome lost in a power cut only means a second send. Nothing acts
        # on it before a synced commit: the janitor commits its spool-removal marks with
        # the WAL's fsync (which makes every earlier commit durable) before it unlinks a
        # delivered instance's file.
        # In id order, each delivery row before its claim row: the order a claim (which
        # takes no writer lock) locks them in, so the two never wait for each other in a
        # cycle (see claim).
        with self._database.transaction(durable=False) as connection:
            for outcome in sorted(outcomes, key=lambda o: o.delivery_id):
                row = connection.execute(
                    "SELECT state FROM deliveries WHERE id = ?", (outcome.delivery_id,)
                ).fetchone()
                if row is None:
                    continue
                previous = DeliveryState(row[0])
                if previous is DeliveryState.DELIVERED:
                    # final: a late duplicate outcome changes nothing. No claim can be
                    # starting on it, so its claim row may go without its delivery row.
                    connection.execute("DELETE FROM delivery_claims WHERE delivery_id = ?",
                                       (outcome.delivery_id,))
                    continue
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
                connection.execute("DELETE FROM delivery_claims WHERE delivery_id = ?",
                                   (outcome.delivery_id,))
                if outcome.transcoded_from and outcome.transfer_syntax_uid:
                    connection.execute(
                        "INSERT INTO delivery_transcodings(delivery_id, transfer_syntax_uid,"
                        " transcoded_from) VALUES (?, ?, ?) ON CONFLICT(delivery_id) DO UPDATE"
                        " SET transfer_syntax_uid = excluded.transfer_syntax_uid,"
                        " transcoded_from = excluded.transcoded_from",
                        (outcome.delivery_id, outcome.transfer_syntax_uid,
                         outcome.transcoded_from))
                if outcome.suspect:
                    connection.execute(
                        "INSERT INTO delivery_suspects(delivery_id, since, reason)"
                        " VALUES (?, ?, ?) ON CONFLICT(delivery_id)"
                        " DO UPDATE SET reason = excluded.reason",
                        (outcome.delivery_id, now, outcome.error),
                    )
                elif outcome.state is DeliveryState.DELIVERED:
                    connection.execute("DELETE FROM delivery_suspects WHERE delivery_id = ?",
                                       (outcome.delivery_id,))
            write_requests(connection, commitments, now)

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


def _delete_claims_in_order(connection: Connection, where: str,
                            parameters: tuple[object, ...]) -> int:
    """Delete the claims matching ``where`` one by one in id order (a single ``DELETE``
    locks its rows in whatever order it finds them, which could close a cycle with a claim
    taking over some of them); how many."""
    ids = [int(row[0]) for row in connection.execute(
        f"SELECT delivery_id FROM delivery_claims WHERE {where} ORDER BY delivery_id",
        parameters).fetchall()]
    if not ids:
        return 0
    return int(connection.executemany(
        f"DELETE FROM delivery_claims WHERE delivery_id = ? AND {where}",
        [(i, *parameters) for i in ids]).rowcount)
