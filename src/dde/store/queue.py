"""The delivery queue: what is due for an endpoint, and the outcomes of sending it.

Outcomes follow the legal transitions of :mod:`dde.store.states`; a late outcome for a
delivered delivery changes nothing (delivered is final).

Several workers deliver to one endpoint: each *claims* the deliveries it is about to send
(a lease with an owner and an expiry, in ``delivery_claims``), so two workers never hold
the same delivery. A claim ends with the outcome, with :meth:`DeliveryQueue.release`, when
it expires, or at once for all on :meth:`DeliveryQueue.release_all_claims` (the dispatcher's
start: after a crash no claim blocks anything). Claims, renewals, releases and outcomes are
committed without waiting for the disk (``durable=False``): a lost one only means a second
send, and the spool janitor's durable commit comes before any file is removed. A delivery
the destination never answered is *suspect* (``delivery_suspects``): it is claimed only by
the endpoint's suspect lane, one at a time, until it is delivered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from dde.store.database import Backend, database_errors_as_ledger_errors
from dde.store.intake import queued_counts
from dde.store.records import DeliveryOutcome, QueuedDelivery
from dde.store.states import DeliveryState, check_transition

_QUEUED = ("SELECT d.id, d.instance_id, d.endpoint, d.attempts, i.spool_path,"
           " i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.received_at ")
"""The columns of a :class:`QueuedDelivery`, in its field order (``d``: deliveries,
``i``: instances)."""


@database_errors_as_ledger_errors
class DeliveryQueue:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def due(self, endpoint: str, now: float, limit: int) -> list[QueuedDelivery]:
        rows = self._database.connection().execute(
            _QUEUED + "FROM deliveries d JOIN instances i ON i.id = d.instance_id"
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
        expired rather than ended: a node died holding them, so they may be sent twice."""
        if suspects:
            source = ("FROM delivery_suspects s JOIN deliveries d ON d.id = s.delivery_id"
                      " JOIN instances i ON i.id = d.instance_id WHERE")
        else:
            source = ("FROM deliveries d JOIN instances i ON i.id = d.instance_id WHERE"
                      " NOT EXISTS (SELECT 1 FROM delivery_suspects s"
                      " WHERE s.delivery_id = d.id) AND")
        query = (_QUEUED + source +
                 " d.endpoint = ? AND d.state = 'pending' AND d.next_attempt_at <= ?"
                 " AND NOT EXISTS (SELECT 1 FROM delivery_claims c"
                 " WHERE c.delivery_id = d.id AND c.expires_at > ?)"
                 " ORDER BY d.next_attempt_at, d.id LIMIT ?")
        parameters = (endpoint, now, now, limit)
        # A plain read first: an idle worker's look never takes the write lock.
        if not self._database.connection().execute(query, parameters).fetchone():
            return []
        with self._database.transaction(durable=False) as connection:
            rows = connection.execute(query, parameters).fetchall()
            if taken_over is not None and rows:  # claims left behind: all expired here
                ids = [row[0] for row in rows]
                taken_over.extend(int(found[0]) for found in connection.execute(
                    "SELECT delivery_id FROM delivery_claims WHERE owner != ? AND delivery_id"
                    f" IN ({', '.join('?' * len(ids))})", (owner, *ids)).fetchall())
            connection.executemany(
                "INSERT INTO delivery_claims(delivery_id, owner, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT(delivery_id) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at",
                [(row[0], owner, now + lease) for row in rows],
            )
        return [QueuedDelivery(*row) for row in rows]

    def renew(self, owner: str, delivery_ids: Iterable[int], until: float) -> None:
        """Extend ``owner``'s claims on ``delivery_ids`` until ``until``."""
        with self._database.transaction(durable=False) as connection:
            connection.executemany(
                "UPDATE delivery_claims SET expires_at = ? WHERE delivery_id = ? AND owner = ?",
                [(until, i, owner) for i in delivery_ids],
            )

    def release(self, owner: str, delivery_ids: Iterable[int] | None = None) -> None:
        """End ``owner``'s claims (on ``delivery_ids``, or all of them): others may take
        those deliveries at once."""
        with self._database.transaction(durable=False) as connection:
            if delivery_ids is None:
                connection.execute("DELETE FROM delivery_claims WHERE owner = ?", (owner,))
            else:
                connection.executemany(
                    "DELETE FROM delivery_claims WHERE delivery_id = ? AND owner = ?",
                    [(i, owner) for i in delivery_ids],
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
            return int(connection.execute(
                "DELETE FROM delivery_claims WHERE substr(owner, 1, ?) = ?",
                (len(prefix), prefix)).rowcount)

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
                        now: float | None = None) -> None:
        if not outcomes:
            return
        now = time.time() if now is None else now
        # Unsynced: an outcome lost in a power cut only means a second send. Nothing acts
        # on it before a synced commit: the janitor commits its spool-removal marks with
        # the WAL's fsync (which makes every earlier commit durable) before it unlinks a
        # delivered instance's file.
        with self._database.transaction(durable=False) as connection:
            for outcome in outcomes:
                row = connection.execute(
                    "SELECT state FROM deliveries WHERE id = ?", (outcome.delivery_id,)
                ).fetchone()
                if row is None:
                    continue
                connection.execute("DELETE FROM delivery_claims WHERE delivery_id = ?",
                                   (outcome.delivery_id,))
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
