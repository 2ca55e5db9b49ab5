"""ConfigStore in shared mode (``store.backend: postgresql``): two state folders (two nodes)
on one PostgreSQL database share the endpoints and the rules; each keeps its own other
settings. Seeding, a change seen by the other node (settings, rules, watch, its files), a
refused change writes nothing, a database error at the watch, and SQLite untouched."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.postgres import PostgresServer
from tests.support.unitkit import MR_RULES as RULES
from tests.support.unitkit import add, without

from dde.config import (
    ConfigError,
    Home,
    Settings,
    parse_settings,
    settings_to_yaml,
)
from dde.config_store import ConfigStore
from dde.config_watch import ConfigWatch
from dde.routing.rules import RulesError
from dde.shared_config import SharedConfigUnavailable
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.shared_documents import SharedDocuments


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME",
                     "DDE_STORE_URL", "DDE_STORE_BACKEND", "DDE_STORE_NODE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def write_home(root: Path, url: str | None, node: str, **extra: Any) -> ConfigStore:
    """A state folder whose dde.yaml names the shared database (None: SQLite)."""
    raw: dict[str, Any] = {"receiver": {"ae_title": node.upper()}, **extra}
    if url is not None:
        raw["store"] = {"backend": "postgresql", "url": url, "node": node}
    home = Home(root)
    home.ensure()
    home.config_file.write_text(settings_to_yaml(parse_settings(raw)))
    return ConfigStore(home)


@pytest.fixture
def nodes(tmp_path: Path, database: str) -> Iterator[tuple[ConfigStore, ConfigStore]]:
    first = write_home(tmp_path / "node1", database, "node1")
    second = write_home(tmp_path / "node2", database, "node2")
    yield first, second
    first.close()
    second.close()


def versions(url: str) -> dict[str, int]:
    ledger = Ledger(url=url)
    try:
        return ledger.shared_documents.versions()
    finally:
        ledger.close()


def names(settings: Settings) -> list[str]:
    return [e.name for e in settings.endpoints]


def watching(store: ConfigStore) -> ConfigWatch:
    """The watch as a running router has it: started with the configuration in force."""
    settings = store.settings()
    return ConfigWatch(store, (settings, store.ruleset(settings)))


def file_endpoints(store: ConfigStore) -> list[str]:
    return [e["name"] for e in yaml.safe_load(store.path.read_text())["endpoints"]]


# -- seeding -------------------------------------------------------------------------------

def test_the_first_node_to_look_seeds_the_cluster_from_its_own_files(
        tmp_path: Path, database: str) -> None:
    first = write_home(tmp_path / "node1", database, "node1", endpoints=[
        {"name": "PACS-A", "aet": "PACS_A", "port": 104, "groups": ["storage"]},
        {"name": "PACS-B", "aet": "PACS_B", "port": 105, "groups": ["storage"]}],
        routing={"mirror": []})
    first.rules_path.write_text("rules:\n  - {name: all, route: [PACS-A]}\n")
    second = write_home(tmp_path / "node2", database, "node2")  # the default endpoints
    try:
        assert names(first.settings()) == ["PACS-A", "PACS-B"]  # seeds

        assert names(second.settings()) == ["PACS-A", "PACS-B"]
        assert second.rules_text(second.settings()) == first.rules_path.read_text()
        assert second.settings().receiver.ae_title == "NODE2"  # its own settings stay
        assert versions(database) == {"endpoints": 1, "rules": 1}
        # its own files are its copies: a running router's watch brings them up to date
        assert file_endpoints(second) == ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]
        ConfigWatch(second)
        assert file_endpoints(second) == ["PACS-A", "PACS-B"]
        assert second.rules_path.read_text() == first.rules_path.read_text()
    finally:
        first.close()
        second.close()


def test_a_node_without_rules_seeds_the_default_rule(nodes: tuple[ConfigStore, ConfigStore],
                                                      database: str) -> None:
    first, second = nodes
    second.rules_path.write_text(RULES)  # node2 looks second: its rules are not the cluster's

    first.settings()

    assert second.rules_text(second.settings()) is None
    assert [r.name for r in second.ruleset(second.settings()).rules] == ["default"]
    ConfigWatch(second)
    assert not second.rules_path.exists()  # moved aside, so the files tell the truth
    assert (second.rules_path.parent / "rules.yaml.not-shared").read_text() == RULES


def test_invalid_own_rules_seed_nothing(nodes: tuple[ConfigStore, ConfigStore],
                                        database: str) -> None:
    first, _ = nodes
    first.rules_path.write_text("rules:\n  - {name: x, route: [NOPE]}\n")

    with pytest.raises(ConfigError, match="NOPE"):
        first.settings()

    assert versions(database) == {}


def test_the_environment_alone_may_make_a_node_shared(
        tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One dde.yaml for every node (containers): DDE_STORE_BACKEND and DDE_STORE_URL."""
    first = write_home(tmp_path / "node1", None, "node1")
    monkeypatch.setenv("DDE_STORE_BACKEND", "postgresql")
    monkeypatch.setenv("DDE_STORE_URL", database)
    try:
        first.update(add("ORTHANC3"))

        assert "endpoints" in versions(database)
        written = yaml.safe_load(first.path.read_text())["store"]
        assert written == {"backend": "sqlite", "node": ""}  # the environment not baked in
        assert file_endpoints(first)[-1] == "ORTHANC3"
    finally:
        first.close()


# -- changes ---------------------------------------------------------------------------------

def test_an_endpoint_added_on_one_node_is_seen_by_the_other(
        nodes: tuple[ConfigStore, ConfigStore]) -> None:
    first, second = nodes
    watch = ConfigWatch(second)
    assert watch.changed() is None

    first.update(add("ORTHANC3"))

    assert file_endpoints(first) == ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE", "ORTHANC3"]
    assert "ORTHANC3" in names(second.settings())
    change = watch.changed()
    assert change is not None and "ORTHANC3" in names(change[0])
    assert file_endpoints(second)[-1] == "ORTHANC3"  # its copy brought up to date
    assert watch.changed() is None  # its own rewrite of the copy is no second change
    assert yaml.safe_load(second.path.read_text())["receiver"]["ae_title"] == "NODE2"


def test_a_node_with_a_stale_copy_keeps_the_other_nodes_change(
        nodes: tuple[ConfigStore, ConfigStore]) -> None:
    """node2's dde.yaml does not have ORTHANC3 yet when it adds ORTHANC4: both stay."""
    first, second = nodes
    first.update(add("ORTHANC3"))

    second.update(add("ORTHANC4"))

    assert names(first.settings())[-2:] == ["ORTHANC3", "ORTHANC4"]
    assert file_endpoints(second)[-2:] == ["ORTHANC3", "ORTHANC4"]


def test_concurrent_changes_on_two_nodes_both_stay(
        nodes: tuple[ConfigStore, ConfigStore]) -> None:
    errors: list[BaseException] = []

    def add_many(store: ConfigStore, prefix: str) -> None:
        try:
            for number in range(5):
                store.update(add(f"{prefix}{number}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add_many, args=(store, prefix))
               for store, prefix in zip(nodes, ("A", "B"), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    added = set(names(nodes[0].settings())) - {"ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"}
    assert added == {f"{p}{n}" for p in "AB" for n in range(5)}


def test_rules_applied_on_one_node_are_the_other_nodes_rules(
        nodes: tuple[ConfigStore, ConfigStore], database: str) -> None:
    first, second = nodes
    watch = ConfigWatch(second)

    ruleset = first.apply_rules(RULES)

    assert [r.name for r in ruleset.rules] == ["mr-to-orthanc2", "default"]
    assert first.rules_path.read_text() == RULES
    assert second.rules_text(second.settings()) == RULES
    change = watch.changed()
    assert change is not None and [r.name for r in change[1].rules] == ["mr-to-orthanc2",
                                                                        "default"]
    assert second.rules_path.read_text() == RULES


def test_invalid_rules_are_refused_and_nothing_is_written(
        nodes: tuple[ConfigStore, ConfigStore], database: str) -> None:
    first, second = nodes
    first.apply_rules(RULES)
    before = versions(database)

    with pytest.raises(RulesError, match="ORTHANC7"):
        first.apply_rules(RULES.replace("[ORTHANC2]", "[ORTHANC7]"))

    assert versions(database) == before
    assert first.rules_path.read_text() == RULES
    assert second.rules_text(second.settings()) == RULES


def test_rules_naming_an_endpoint_only_the_cluster_has_are_accepted(
        nodes: tuple[ConfigStore, ConfigStore]) -> None:
    """The rules are checked against the shared endpoints, not the node's stale copy."""
    first, second = nodes
    first.update(add("ORTHANC3"))

    second.apply_rules("rules:\n  - {name: all, route: [ORTHANC3]}\n")

    assert [r.endpoints for r in first.ruleset(first.settings()).rules] == [("ORTHANC3",)]


def test_a_change_that_breaks_the_shared_rules_is_refused_on_any_node(
        nodes: tuple[ConfigStore, ConfigStore], database: str) -> None:
    first, second = nodes
    first.apply_rules(RULES)
    before = versions(database)
    copy = second.path.read_bytes()

    with pytest.raises(ConfigError, match="ORTHANC2"):
        second.update(without("ORTHANC2"))

    assert versions(database) == before
    assert second.path.read_bytes() == copy
    assert "ORTHANC2" in names(first.settings())


def test_a_hand_edit_of_a_nodes_endpoints_is_replaced_by_the_shared_ones(
        nodes: tuple[ConfigStore, ConfigStore]) -> None:
    first, _ = nodes
    watch = watching(first)
    text = first.path.read_text()
    first.path.write_text(text.replace("name: ORTHANC1", "name: ORTHANC9"))

    assert watch.changed() is None  # the configuration in force did not change

    assert "ORTHANC9" not in file_endpoints(first)
    assert names(first.settings())[0] == "ORTHANC1"


# -- the watch and the database --------------------------------------------------------------

def test_a_database_error_at_the_watch_keeps_the_configuration_and_is_logged_once(
        nodes: tuple[ConfigStore, ConfigStore], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    first, second = nodes
    watch = ConfigWatch(second)
    caplog.set_level(logging.INFO, logger="dde.config_watch")

    def down(self: SharedDocuments) -> dict[str, int]:
        raise LedgerError("postgresql://…: server closed the connection")

    with monkeypatch.context() as patched:
        patched.setattr(SharedDocuments, "versions", down)
        assert watch.changed() is None
        assert watch.changed() is None
        assert caplog.text.count("cannot be read") == 1
        with pytest.raises(SharedConfigUnavailable):
            second.fingerprint()
        first.update(add("ORTHANC3"))  # made meanwhile on the other node
        assert watch.changed() is None

    change = watch.changed()  # the database is back: the change is applied
    assert change is not None and "ORTHANC3" in names(change[0])
    assert "can be read again" in caplog.text


def test_a_database_error_between_fingerprint_and_read_retries_at_the_next_poll(
        nodes: tuple[ConfigStore, ConfigStore], monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = nodes
    watch = ConfigWatch(second)
    first.update(add("ORTHANC3"))
    original = SharedDocuments.read_many

    def down(self: SharedDocuments, names: tuple[str, ...]) -> Any:
        raise LedgerError("postgresql://…: connection refused")

    monkeypatch.setattr(SharedDocuments, "read_many", down)
    assert watch.changed() is None
    monkeypatch.setattr(SharedDocuments, "read_many", original)

    change = watch.changed()
    assert change is not None and "ORTHANC3" in names(change[0])


# -- SQLite --------------------------------------------------------------------------------------

def test_sqlite_mode_opens_no_database_and_keeps_its_fingerprint(tmp_path: Path) -> None:
    store = write_home(tmp_path / "alone", None, "alone")

    store.update(add("ORTHANC3"))
    store.apply_rules(RULES)
    ConfigWatch(store).changed()

    assert not store.shared
    fingerprint = store.fingerprint()
    assert len(fingerprint) == 2  # the two files' stat, nothing else
    assert not store.home.database.exists()
    assert "ORTHANC3" in file_endpoints(store)
