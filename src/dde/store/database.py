"""The ledger's database: one SQLite file, one connection per thread, transactions.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed transaction is on disk.
Writers are serialised by SQLite (``BEGIN IMMEDIATE``). Opening refuses a damaged file
(``PRAGMA quick_check``) and one another process keeps locked, before anything is written
(:mod:`dde.store.errors`); then the schema is created or migrated (:mod:`dde.store.schema`).

Only the repositories of :mod:`dde.store` use this class: it is where SQL lives.
"""

from __future__ import annotations

import functools
import inspect
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from dde.store.errors import LedgerError, damaged, open_error
from dde.store.schema import migrate

BUSY_TIMEOUT_MS = 30_000

R = TypeVar("R")
C = TypeVar("C", bound=type)


def _translated(method: Callable[..., R], path_of: Callable[[Any], Path]) -> Callable[..., R]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
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


class Database:
    def __init__(self, path: Path, open_timeout: float = 5.0) -> None:
        """Open (or create) the database. A lock held longer than ``open_timeout`` seconds
        raises :class:`~dde.store.errors.LedgerLocked`; a damaged file
        :class:`~dde.store.errors.LedgerCorrupt`."""
        self.path = path
        _make_private(path)
        self._local = threading.local()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        """Each thread's connection. A thread that ended no longer needs its own: it is
        closed when the next thread opens one (the receiver runs a thread per association;
        kept, their connections and page caches grew the process with every association)."""
        self._lock = threading.Lock()
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
            raise open_error(self.path, exc) from None
        self._local.connection = connection
        with self._lock:
            ended = [t for t in self._connections if not t.is_alive()]
            orphans = [self._connections.pop(t) for t in ended]
            self._connections[threading.current_thread()] = connection
        for orphan in orphans:
            _close_quietly(orphan)
        return connection

    def open_connections(self) -> int:
        """How many connections are open now (one per live thread that used the ledger,
        plus those of threads that ended since the last connection was opened)."""
        with self._lock:
            return len(self._connections)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back on an error.

        A database error (locked past the busy timeout, disk full, I/O error) leaves as
        :class:`~dde.store.errors.LedgerError`; any other exception passes unchanged."""
        connection = self.connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: {exc}") from exc
        try:
            yield connection
        except BaseException as exc:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the transaction is gone already (the error ended it)
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"{self.path}: {exc}") from exc
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise LedgerError(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            _close_quietly(connection)
        self._local = threading.local()


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
