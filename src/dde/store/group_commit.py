"""Group commit: writers that arrive while a transaction is being committed share the next
one, so several receiving associations pay for one commit (one WAL fsync) between them.

Each writer's work runs inside its own savepoint, so one writer's failure (a routing
refusal, a constraint) undoes only its own rows. A writer returns only after the transaction
holding its rows has committed; if that commit fails, every writer of the batch gets the
error (none of them was written). One writer at a time leads: it commits the batch waiting
at that moment, then hands the lead to the first writer that arrived meanwhile, so no writer
serves the others for long.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from dde.store.database import Backend, Connection

T = TypeVar("T")


class _Writer(Generic[T]):
    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.done = threading.Event()
        self.leads = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit:
    def __init__(self, database: Backend) -> None:
        self._database = database
        self._lock = threading.Lock()
        self._waiting: list[_Writer[object]] = []
        self._leader_active = False
        self.transactions = 0
        """Transactions committed or tried (tests and metrics compare it with writers)."""

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a write transaction shared with the writers waiting now; return
        its result once that transaction is committed (or raise what it raised)."""
        writer: _Writer[T] = _Writer(work)
        with self._lock:
            self._waiting.append(writer)  # type: ignore[arg-type]
            if not self._leader_active:
                self._leader_active = writer.leads = True
        if not writer.leads:
            writer.done.wait()
            if not writer.leads:  # committed (or failed) by another writer's batch
                return writer.outcome()
        self._lead()
        return writer.outcome()

    def _lead(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        try:
            self._commit(batch)
        finally:
            with self._lock:
                if self._waiting:
                    successor = self._waiting[0]
                    successor.leads = True
                    successor.done.set()
                else:
                    self._leader_active = False
            for writer in batch:
                writer.done.set()

    def _commit(self, batch: list[_Writer[object]]) -> None:
        self.transactions += 1
        try:
            with self._database.transaction() as connection:
                for writer in batch:
                    connection.execute("SAVEPOINT writer")
                    try:
                        writer.result = writer.work(connection)
                    except Exception as exc:
                        connection.execute("ROLLBACK TO writer")  # only this writer's rows
                        writer.error = exc
                    connection.execute("RELEASE writer")
        except BaseException as exc:  # the transaction failed: nobody's rows were written
            for writer in batch:
                writer.result, writer.error = None, exc
            if not isinstance(exc, Exception):
                raise
