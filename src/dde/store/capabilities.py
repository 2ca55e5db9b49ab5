"""What each DICOM endpoint accepts: (SOP class, transfer syntax) pairs learned from the
presentation-context results of every association the router opens to it.

The delivery side records what it learns (:meth:`EndpointCapabilities.learn`, one row per
pair, the latest answer wins); the receiving side reads the refusals
(:meth:`EndpointCapabilities.refusals`) to answer a failure at C-STORE time for an
instance no chosen destination can take. A row older than the caller's ``max_age`` is not
used (the PACS may have been reconfigured); the next association learns the pair again.
``dde endpoints enable`` forgets an endpoint's rows (:meth:`forget`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from dde.store.database import Backend, database_errors_as_ledger_errors


@dataclass(frozen=True)
class LearnedPair:
    """One presentation context's answer: ``accepted`` or rejected."""

    sop_class_uid: str
    transfer_syntax_uid: str
    accepted: bool


@database_errors_as_ledger_errors
class EndpointCapabilities:
    def __init__(self, database: Backend) -> None:
        self._database = database

    def learn(self, endpoint: str, pairs: Iterable[LearnedPair],
              now: float | None = None) -> None:
        """Record the answers of one association (not durably: a lost row is learned
        again by the next association)."""
        rows = [(endpoint, p.sop_class_uid, p.transfer_syntax_uid, int(p.accepted),
                 time.time() if now is None else now) for p in pairs]
        if not rows:
            return
        with self._database.transaction(durable=False) as connection:
            connection.executemany(
                "INSERT INTO endpoint_capabilities(endpoint, sop_class_uid,"
                " transfer_syntax_uid, accepted, learned_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(endpoint, sop_class_uid, transfer_syntax_uid) DO UPDATE SET"
                " accepted = excluded.accepted, learned_at = excluded.learned_at",
                sorted(rows))

    def answers(self, max_age: float, now: float | None = None
                ) -> dict[tuple[str, str, str], bool]:
        """{(endpoint, SOP class, transfer syntax): accepted} learned within ``max_age``
        seconds."""
        since = (time.time() if now is None else now) - max_age
        rows = self._database.connection().execute(
            "SELECT endpoint, sop_class_uid, transfer_syntax_uid, accepted"
            " FROM endpoint_capabilities WHERE learned_at >= ?", (since,)).fetchall()
        return {(str(e), str(c), str(t)): bool(a) for e, c, t, a in rows}

    def forget(self, endpoint: str) -> int:
        """Drop what was learned of ``endpoint`` (re-enabled: it may accept more now)."""
        with self._database.transaction(durable=False) as connection:
            return int(connection.execute(
                "DELETE FROM endpoint_capabilities WHERE endpoint = ?", (endpoint,)).rowcount)
