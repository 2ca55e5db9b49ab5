"""The ledger on PostgreSQL (``store.backend: postgresql``): the same repositories, schema
and SQL as on SQLite, through psycopg 3.

The repositories write SQLite's dialect with ``?`` placeholders; :class:`PgConnection`
translates the placeholders (and escapes ``%``) once per statement text. Every write
transaction but the claims takes one transaction-level advisory lock first, so that writers
are serialised exactly as SQLite's ``BEGIN IMMEDIATE`` serialises them (an ingest's routing
decision, the outcomes recorded and the moves see the same rules on both backends). Claims
skip it (``serialised=False``): their rows guard themselves (``FOR UPDATE SKIP LOCKED`` and a
conditional claim insert), so the workers of all nodes claim beside each other instead of
queueing behind every ingest commit. Commits are durable (``synchronous_commit`` on) unless
a transaction is opened with ``durable=False`` (claims, outcomes), which sets
``synchronous_commit = off`` for that transaction only.

One connection per thread (autocommit, explicit ``BEGIN``/``COMMIT``), opened again when the
server has closed it (a restart of PostgreSQL): the next call after the server is back
works, the calls while it is down raise :class:`~dde.store.errors.LedgerError`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dde.store.database import ThreadConnections, committed
from dde.store.errors import LedgerError
from dde.store.schema import migrate

WRITER_LOCK = 0x4444_4501
"""The advisory lock key every write transaction takes (``pg_advisory_xact_lock``)."""
CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = 20_000
"""A statement that takes longer fails (and a node hung in the middle of one, its session
still active, loses it and the writer lock with it after this long)."""
LOCK_WAIT_MS = 60_000
"""How long a writer waits for the writer lock: longer than a hung holder can keep it, so
that waiters outlast it rather than fail with it."""
IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000
"""A session that keeps a transaction open without a statement this long is ended by the
server, its writer lock with it: a node that hangs inside a transaction (frozen, paused,
cut off) holds the other nodes' writes for at most this long."""


def display_url(url: str) -> str:
    """``url`` without its password: what errors and logs may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@functools.lru_cache(maxsize=512)
def translate(statement: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return re.sub(r"\?", "%s", statement.replace("%", "%%"))


class PgConnection:
    """A psycopg connection with the calls the repositories make on a SQLite one."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        if parameters:
            cursor.execute(translate(statement), tuple(parameters))
        else:  # no parameters: the text goes as it is (a literal % stays one)
            cursor.execute(statement.encode())
        return cursor

    def executemany(self, statement: str,
                    rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(translate(statement), [tuple(row) for row in rows])
        return cursor

    def executescript(self, script: str) -> None:
        self.raw.execute(script.encode())

    @property
    def usable(self) -> bool:
        return not (self.raw.closed or self.raw.broken)


class PostgresDatabase:
    errors: tuple[type[Exception], ...] = (psycopg.Error,)
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        """Connect, and create or migrate the schema (one node at a time)."""
        self.url = url
        self.path = display_url(url)
        self._connections: ThreadConnections[PgConnection] = ThreadConnections(_close_quietly)
        with self.transaction() as connection:
            migrate(connection, self.path, self.dialect)

    def connection(self) -> PgConnection:
        """This thread's connection (opened at its first use, again after a failure)."""
        connection = self._connections.current()
        if connection is not None and connection.usable:
            return connection
        try:
            raw = psycopg.connect(self.url, autocommit=True,
                                  connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                  options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
                                  " -c idle_in_transaction_session_timeout="
                                  f"{IDLE_IN_TRANSACTION_TIMEOUT_MS}")
        except psycopg.Error as exc:
            raise LedgerError(f"{self.path}: cannot connect: {_first_line(exc)}") from exc
        return self._connections.adopt(PgConnection(raw))

    def open_connections(self) -> int:
        return self._connections.count()

    @contextmanager
    def transaction(self, durable: bool = True,
                    serialised: bool = True) -> Iterator[PgConnection]:
        """A write transaction: committed when the block ends, rolled back on an error;
        writers one at a time (the advisory lock).

        ``serialised=False`` skips the advisory lock: for a writer whose rows guard
        themselves (a claim locks its delivery rows ``FOR UPDATE SKIP LOCKED`` and writes
        its claim rows only where no live claim stands), so that claims of all nodes run
        beside each other and beside the ingest commits. Such a writer takes row locks in
        an order the serialised writers can not close into a cycle with (see
        :meth:`~dde.store.queue.DeliveryQueue.claim`); should PostgreSQL still report a
        deadlock, it leaves as :class:`~dde.store.errors.LedgerError` like any database
        error."""
        connection = self.connection()
        after = "" if durable else "; SET LOCAL synchronous_commit = off"
        if serialised:
            begin = [f"BEGIN; SET LOCAL statement_timeout = {LOCK_WAIT_MS}",
                     f"SELECT pg_advisory_xact_lock({WRITER_LOCK});"
                     f" SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}{after}"]
        else:
            begin = [f"BEGIN; SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}{after}"]
        with committed(connection, begin, self.errors, self.path, _first_line):
            yield connection

    def checkpoint(self) -> None:
        """Nothing to fold back: PostgreSQL manages its own write-ahead log."""

    @staticmethod
    def ids_written(connection: PgConnection, table: str) -> None:
        """Rows were written with explicit ids: move the table's identity past them."""
        connection.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)")

    def close(self) -> None:
        self._connections.close_all()


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _close_quietly(connection: PgConnection) -> None:
    try:
        connection.raw.close()
    except psycopg.Error:
        pass


def database_exists(url: str, create: bool = False) -> bool:
    """Whether the server at ``url`` answers and has its database (``create``: made when
    absent, through the server's ``postgres`` database); False while it does not answer."""
    name = str(conninfo_to_dict(url).get("dbname") or "")
    admin = make_conninfo(url, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=2) as connection:
            found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                       (name,)).fetchone()
            if found is None and create:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                found = (1,)
        return found is not None
    except psycopg.Error:
        return False
