"""The ledger: every received instance, its deliveries, the study pins, events and the
published endpoint status — one database, one repository per kind of use.

| repository | used by | what for |
| --- | --- | --- |
| ``intake`` (:class:`IngestRecords`) | the ingest pipeline | an instance, its deliveries |
| ``queue`` (:class:`DeliveryQueue`) | the dispatcher | due deliveries, their outcomes |
| ``spool_index`` (:class:`SpoolIndex`) | the spool janitor | which spool files may go |
| ``operators`` (:class:`OperatorQueries`) | CLI, API | where, search, queue, retry |
| ``moves`` (:class:`StudyMoves`) | failover, forced removal | move a study's rest, re-pin |
| ``event_log`` (:class:`EventLog`) | moves, the dashboard | what happened |
| ``status_board`` (:class:`EndpointStatusBoard`) | router, receivers, explain | health and load |
| ``capabilities`` (:class:`EndpointCapabilities`) | senders, receivers | what a PACS accepts |
| ``commitments`` (:class:`CommitmentBook`) | receivers, dispatcher, where | commitment states |
| ``diagnostics`` (:class:`Diagnostics`) | tests, benchmarks, readiness | counts, rows as records |
| ``shared_documents`` (:class:`SharedDocuments`) | config store | shared endpoints, rules |

The repositories are the seam a second database backend implements; SQL lives in them and
in :mod:`dde.store.database`, nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from dde.config import StoreBackend, StoreSettings
from dde.store.capabilities import EndpointCapabilities
from dde.store.commitments import CommitmentBook
from dde.store.database import Backend, Database
from dde.store.diagnostics import Diagnostics
from dde.store.events import EventLog
from dde.store.intake import IngestRecords
from dde.store.moves import StudyMoves
from dde.store.operators import OperatorQueries
from dde.store.queue import DeliveryQueue
from dde.store.shared_documents import SharedDocuments
from dde.store.spool_index import SpoolIndex
from dde.store.status_board import EndpointStatusBoard


class Ledger:
    def __init__(self, path: Path | None = None, open_timeout: float = 5.0, *,
                 url: str | None = None) -> None:
        """Open (or create) the ledger: the SQLite file at ``path`` (see
        :class:`~dde.store.database.Database`), or the PostgreSQL database at ``url`` (see
        :class:`~dde.store.postgres.PostgresDatabase`)."""
        self.database: Backend
        if url is not None:
            from dde.store.postgres import PostgresDatabase  # psycopg only when asked for

            self.database = PostgresDatabase(url)
        elif path is not None:
            self.database = Database(path, open_timeout)
        else:
            raise ValueError("a ledger needs a path (SQLite) or a url (PostgreSQL)")
        self.path = self.database.path
        self.intake = IngestRecords(self.database)
        self.queue = DeliveryQueue(self.database)
        self.spool_index = SpoolIndex(self.database)
        self.operators = OperatorQueries(self.database)
        self.moves = StudyMoves(self.database)
        self.event_log = EventLog(self.database)
        self.status_board = EndpointStatusBoard(self.database)
        self.capabilities = EndpointCapabilities(self.database)
        self.commitments = CommitmentBook(self.database)
        self.diagnostics = Diagnostics(self.database)
        self.shared_documents = SharedDocuments(self.database)

    def close(self) -> None:
        self.database.close()


def open_ledger(store: StoreSettings, sqlite_path: Path, open_timeout: float = 5.0) -> Ledger:
    """The ledger ``store`` names: PostgreSQL at ``store.url``, or SQLite at ``sqlite_path``
    (the state folder's)."""
    if store.backend is StoreBackend.POSTGRESQL:
        return Ledger(url=store.url)
    return Ledger(sqlite_path, open_timeout)
