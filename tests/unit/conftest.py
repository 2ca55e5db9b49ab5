"""Fixtures of the unit tests: a ledger (on each backend: a SQLite file in a temporary
folder, and a database of its own on the session's PostgreSQL server), a spool, and the
delivery workers and dispatchers a test starts (stopped at teardown)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.postgres import PostgresServer

from dde.delivery.dispatcher import Dispatcher, EndpointWorker
from dde.store.ledger import Ledger
from dde.store.spool import Spool


@pytest.fixture(autouse=True)
def no_web_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The web part's variables of the developer's shell never leak into unit tests."""
    for variable in ("DDE_WEB_HOST", "DDE_WEB_PORT", "DDE_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[Ledger]:
    """The ledger on SQLite only: for what only that backend has (its file, WAL, PRAGMAs)."""
    book = Ledger(tmp_path / "dde.sqlite3")
    yield book
    book.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """The ledger on each backend: every test that uses it runs on both."""
    if request.param == "sqlite":
        book = Ledger(tmp_path / "dde.sqlite3")
        yield book
        book.close()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    book = Ledger(url=url)
    yield book
    book.close()
    server.drop_database(url)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own on the session's PostgreSQL server: for tests that open
    several ledgers on it (nodes) or connect beside the ledger."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def workers() -> Iterator[list[EndpointWorker | Dispatcher]]:
    """Started workers/dispatchers, stopped at teardown even when a test fails."""
    started: list[EndpointWorker | Dispatcher] = []
    yield started
    for item in reversed(started):
        item.stop()
