"""The ledger's database: one SQLite file, one connection per thread, transactions.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed transaction is on disk.
Writers are serialised by SQLite (``BEGIN IMMEDIATE``). Opening refuses a damaged file
(``PRAGMA quick_check``) and one another process keeps locked, before anything is written
(:mod:`dde.store.errors`); then the schema is created or migrated (:mod:`dde.store.schema`).

Only the repositories of :mod:`dde.store` use this class: it is where SQL lives. The same
repositories run on PostgreSQL (:mod:`dde.store.postgres`);
:func:`dde.store.ledger.open_ledger` picks the backend.
"""

from __future__ import annotations

import functools
import inspect
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from dde.store.errors import LedgerError, damaged, open_error
from dde.store.schema import migrate

BUSY_TIMEOUT_MS = 30_000


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the repositories call on a connection (SQLite's, or :class:`PgConnection`)."""

    def execute(self, statement: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, statement: str, rows: Any, /) -> Cursor: ...


class Backend(Protocol):
    """A ledger database: :class:`Database` (SQLite) or
    :class:`~dde.store.postgres.PostgresDatabase`."""

    path: Any
    dialect: str
    errors: tuple[type[Exception], ...]

    def connection(self) -> Any: ...

    def transaction(self, durable: bool = True, serialised: bool = True) -> Any: ...

    def checkpoint(self) -> None: ...

    def ids_written(self, connection: Any, table: str) -> None: ...

    def open_connections(self) -> int: ...

    def close(self) -> None: ...

R = TypeVar("R")
C = TypeVar("C", bound=type)


def _translated(method: Callable[..., R], path_of: Callable[[Any], Path]) -> Callable[..., R]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> R:
        try:
            return method(self, *args, **kwargs)
        except self._database.errors as exc:
            raise LedgerError(f"{path_of(self)}: {exc}") from exc
    return call


def database_errors_as_ledger_errors(cls: C) -> C:
    """Class decorator for a repository (an object with ``_database``): a database error
    raised by any of its public methods (a read as well as a write) leaves it as
    :class:`~dde.store.errors.LedgerError`, so no caller outside the store sees the
    backend's own exceptions."""
    for name, member in list(vars(cls).items()):
        if inspect.isfunction(member) and not name.startswith("_"):
            setattr(cls, name, _translated(member, lambda self: self._database.path))
    return cls


K = TypeVar("K")


@contextmanager
def committed(connection: Any, begin: Sequence[str], errors: tuple[type[Exception], ...],
              name: str, describe: Callable[[Exception], str] = str) -> Iterator[None]:
    """Run the block in a transaction opened by the ``begin`` statements: committed when
    it ends, rolled back on an error. A database error (one of ``errors``) leaves as
    :class:`~dde.store.errors.LedgerError` named ``name``; any other exception passes."""
    def rollback() -> None:
        try:
            connection.execute("ROLLBACK")
        except errors:
            pass  # the transaction is gone already (the error ended it)

    try:
        for statement in begin:
            connection.execute(statement)
    except errors as exc:
        rollback()
        raise LedgerError(f"{name}: {describe(exc)}") from exc
    try:
        yield
    except BaseException as exc:
        rollback()
        if isinstance(exc, errors):
            raise LedgerError(f"{name}: {describe(exc)}") from exc
        raise
    try:
        connection.execute("COMMIT")
    except errors as exc:
        rollback()
        raise LedgerError(f"{name}: {describe(exc)}") from exc


class ThreadConnections(Generic[K]):
    """One connection per thread, as both backends keep them. A thread that ended no longer
    needs its own: it is closed when the next thread opens one (the receiver runs a thread
    per association; kept, their connections grew the process with every association)."""

    def __init__(self, close: Callable[[K], None]) -> None:
        self._close = close
        self._local = threading.local()
        self._by_thread: dict[threading.Thread, K] = {}
        self._lock = threading.Lock()

    def current(self) -> K | None:
        """This thread's connection, if it has one."""
        found: K | None = getattr(self._local, "connection", None)
        return found

    def adopt(self, connection: K) -> K:
        """Make ``connection`` this thread's (closing those of threads that ended)."""
        self._local.connection = connection
        with self._lock:
            ended = [t for t in self._by_thread if not t.is_alive()]
            orphans = [self._by_thread.pop(t) for t in ended]
            self._by_thread[threading.current_thread()] = connection
        for orphan in orphans:
            self._close(orphan)
        return connection

    def count(self) -> int:
        with self._lock:
            return len(self._by_thread)

    def close_all(self) -> None:
        with self._lock:
            connections = list(self._by_thread.values())
            self._by_thread.clear()
        for connection in connections:
            self._close(connection)
        self._local = threading.local()


class Database:
    dialect = "sqlite"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path, open_timeout: float = 5.0) -> None:
        """Open (or create) the database. A lock held longer than ``open_timeout`` seconds
        raises :class:`~dde.store.errors.LedgerLocked`; a damaged file
        :class:`~dde.store.errors.LedgerCorrupt`."""
        self.path = path
        _make_private(path)
        self._connections: ThreadConnections[sqlite3.Connection] = ThreadConnections(
            _close_quietly)
        connection = self.connection(open_timeout)
        try:
            self._check_at_open(connection)
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            migrate(connection, path)
        except sqlite3.DatabaseError as exc:
            raise open_error(path, exc) from None

    def _check_at_open(self, connection: sqlite3.Connection) -> None:
        problems = [str(row[0]) for row in connection.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise damaged(self.path, problems)
        connection.execute("BEGIN IMMEDIATE")  # fails at once if another process holds it
        connection.execute("ROLLBACK")

    def connection(self, timeout: float = BUSY_TIMEOUT_MS / 1000) -> sqlite3.Connection:
        """This thread's connection (opened at its first use)."""
        connection = self._connections.current()
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
            raise open_error(self.path, exc) from None
        return self._connections.adopt(connection)

    def open_connections(self) -> int:
        """How many connections are open now (one per live thread that used the ledger,
        plus those of threads that ended since the last connection was opened)."""
        return self._connections.count()

    @contextmanager
    def transaction(self, durable: bool = True,
                    serialised: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back on an error.
        ``durable=False``: its commit skips the WAL fsync (the next durable commit makes it
        durable too). ``serialised`` is ignored: SQLite has one writer at a time whatever
        is asked (``BEGIN IMMEDIATE``); only PostgreSQL can let a writer skip the queue.

        A database error (locked past the busy timeout, disk full, I/O error) leaves as
        :class:`~dde.store.errors.LedgerError`; any other exception passes unchanged."""
        connection = self.connection()
        if not durable:
            connection.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction(connection) as open_transaction:
                yield open_transaction
        finally:
            if not durable:
                connection.execute("PRAGMA synchronous=FULL")

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and empty it."""
        self.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @staticmethod
    def ids_written(connection: sqlite3.Connection, table: str) -> None:
        """Rows were written with explicit ids: nothing to do (SQLite takes the next id
        after the largest)."""

    @contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        with committed(connection, ["BEGIN IMMEDIATE"], self.errors, str(self.path)):
            yield connection

    def close(self) -> None:
        self._connections.close_all()


def _close_quietly(connection: sqlite3.Connection) -> None:
    try:
        connection.close()
    except sqlite3.Error:
        pass


PRIVATE_FILE_MODE = 0o600
"""The ledger holds patient IDs and accession numbers: its owner only reads it."""


def _make_private(path: Path) -> None:
    """Create the database file with mode 0600 (SQLite gives its -wal and -shm files the
    database's mode), and make an existing one that is open to others private. Best
    effort: a folder that is missing or not writable is SQLite's to report.

    An existing file is never opened here: closing any descriptor of a database file drops
    every POSIX lock this process holds on it, the locks of other connections included —
    SQLite's documented way to corrupt a database. ``chmod`` needs no descriptor."""
    if not path.exists():
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            pass  # created meanwhile by another opener: not ours to touch
        except OSError:
            return
        else:
            os.close(fd)  # a new, empty file: no connection of this process has it open
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if file.stat().st_mode & 0o077:
                os.chmod(file, PRIVATE_FILE_MODE)
        except OSError:
            pass
