"""``store:`` in dde.yaml: which database holds the ledger, checked before the router starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dde.config import ConfigError, StoreBackend, parse_settings
from dde.store.ledger import open_ledger


def test_the_default_is_the_sqlite_file_in_the_state_folder(tmp_path: Path) -> None:
    settings = parse_settings({})

    assert settings.store.backend is StoreBackend.SQLITE and settings.store.url is None
    ledger = open_ledger(settings.store, tmp_path / "dde.sqlite3")
    try:
        assert ledger.database.dialect == "sqlite" and (tmp_path / "dde.sqlite3").exists()
    finally:
        ledger.close()


@pytest.mark.parametrize(("store", "message"), [
    ({"backend": "postgresql"}, "needs store.url"),
    ({"backend": "postgresql", "url": "mysql://db/dde"}, "must start with postgresql://"),
    ({"url": "postgresql://db/dde"}, "only for store.backend: postgresql"),
    ({"backend": "oracle"}, "backend"),
])
def test_an_unusable_store_section_is_refused_with_the_reason(
        store: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"store": store})


def test_the_url_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDE_STORE_URL", "postgresql://dde:secret@db:5432/dde")

    settings = parse_settings({"store": {"backend": "postgresql"}})

    assert settings.store.url == "postgresql://dde:secret@db:5432/dde"


def test_a_postgresql_store_opens_that_database(postgres_server: object) -> None:
    from tests.support.postgres import PostgresServer

    assert isinstance(postgres_server, PostgresServer)
    url = postgres_server.create_database()
    settings = parse_settings({"store": {"backend": "postgresql", "url": url}})
    ledger = open_ledger(settings.store, Path("/nonexistent/dde.sqlite3"))
    try:
        assert ledger.database.dialect == "postgresql"
        assert ledger.diagnostics.count("instances") == 0
    finally:
        ledger.close()
        postgres_server.drop_database(url)


def test_a_node_is_named_only_when_the_ledger_is_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    from dde.runtime.core import node_name

    monkeypatch.setattr("dde.runtime.core.socket.gethostname", lambda: "pacs-router.example")
    shared = {"backend": "postgresql", "url": "postgresql://db/dde"}

    assert node_name(parse_settings({})) == ""  # SQLite: one node by construction
    assert node_name(parse_settings({"store": shared})) == "pacs_router.example"
    assert node_name(parse_settings({"store": {**shared, "node": "node2"}})) == "node2"
    with pytest.raises(ConfigError, match="node"):
        parse_settings({"store": {**shared, "node": "two words"}})


def test_one_configuration_serves_every_node_through_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDE_STORE_BACKEND", "postgresql")
    monkeypatch.setenv("DDE_STORE_URL", "postgresql://dde@postgres:5432/dde")
    monkeypatch.setenv("DDE_STORE_NODE", "router2")
    monkeypatch.setenv("DDE_SPOOL_FOLDER", "/var/lib/dde-spool")

    settings = parse_settings({})

    assert settings.store.backend is StoreBackend.POSTGRESQL
    assert settings.store.node == "router2"
    assert settings.spool.folder == "/var/lib/dde-spool"
