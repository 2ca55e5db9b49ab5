"""ConfigStore: validated, atomic changes of dde.yaml and rules.yaml, and their fingerprint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from tests.support.unitkit import MR_RULES as RULES
from tests.support.unitkit import Change, add, generated, without

from dde.config import ConfigError, Home, Settings, Strategy
from dde.config_store import ConfigStore
from dde.routing.rules import RulesError
from dde.runtime.core import RouterCore


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    store = ConfigStore(Home(tmp_path / "home"))
    store.settings()  # first use writes the defaults
    return store


def test_update_writes_the_change_and_it_reads_back(store: ConfigStore) -> None:
    returned = store.update(add("ORTHANC3"))

    assert returned.endpoint("ORTHANC3") is not None
    again = ConfigStore(store.home).settings()
    assert [e.name for e in again.endpoints] == ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE",
                                                 "ORTHANC3"]
    text = store.path.read_text()
    assert text.startswith("# Dynamic DICOM Endpoints configuration")  # its comment stays
    assert yaml.safe_load(text)["endpoints"][-1]["name"] == "ORTHANC3"


def test_update_replaces_the_file_atomically_and_leaves_no_temporary(
        store: ConfigStore) -> None:
    inode = store.path.stat().st_ino

    store.update(add("ORTHANC3"))

    assert store.path.stat().st_ino != inode  # a new file renamed over the old one
    leftovers = [p.name for p in store.path.parent.iterdir()
                 if p.name.endswith(".part")]
    assert leftovers == []


def test_a_failed_rename_leaves_the_old_file_whole(store: ConfigStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    before = store.path.read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        store.update(add("ORTHANC3"))

    assert store.path.read_bytes() == before


@pytest.mark.parametrize("change", [
    # two endpoints with one name
    lambda s: s.model_copy(update={"endpoints": [*s.endpoints, s.endpoints[0]]}),
    # a value the model refuses (model_copy does not validate; update must)
    lambda s: s.model_copy(update={"receiver": s.receiver.model_copy(update={"port": 70000})}),
    lambda s: s.model_copy(update={"endpoints": [
        s.endpoints[0].model_copy(update={"weight": -1.0}), *s.endpoints[1:]]}),
])
def test_an_invalid_change_raises_config_error_and_leaves_the_file(store: ConfigStore,
                                                                   change: Change) -> None:
    before = store.path.read_bytes()

    with pytest.raises(ConfigError):
        store.update(change)

    assert store.path.read_bytes() == before
    assert store.settings() == Settings()


def test_a_change_that_refuses_writes_nothing(store: ConfigStore) -> None:
    before = store.path.read_bytes()

    def refuse(settings: Settings) -> Settings:
        raise ConfigError("no")

    with pytest.raises(ConfigError, match="no"):
        store.update(refuse)

    assert store.path.read_bytes() == before


def test_environment_overrides_are_not_written_into_the_file(
        store: ConfigStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDE_DICOM_PORT", "12999")
    monkeypatch.setenv("DDE_AE_TITLE", "FROM_ENV")
    assert store.settings().receiver.port == 12999  # the running view has them

    seen: list[int] = []

    def change(settings: Settings) -> Settings:
        seen.append(settings.receiver.port)
        return add("ORTHANC3")(settings)

    store.update(change)

    written = yaml.safe_load(store.path.read_text())
    assert written["receiver"]["port"] == 11113
    assert written["receiver"]["ae_title"] == "DYNAMIC_DICOM_MW"
    assert seen == [11113]  # the change saw the file's values, not the environment's
    monkeypatch.delenv("DDE_DICOM_PORT")
    monkeypatch.delenv("DDE_AE_TITLE")
    assert store.settings().receiver.port == 11113


def test_an_explicit_config_file_is_the_one_changed(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    explicit = tmp_path / "elsewhere" / "router.yaml"
    explicit.parent.mkdir()
    explicit.write_text("receiver:\n  ae_title: EXPLICIT\n")
    store = ConfigStore(home, explicit)

    store.update(add("ORTHANC3"))

    assert store.settings().receiver.ae_title == "EXPLICIT"
    assert store.settings().endpoint("ORTHANC3") is not None
    assert not home.config_file.exists()


# -- rules -----------------------------------------------------------------------------------

def test_without_rules_file_the_default_rule_applies(store: ConfigStore) -> None:
    settings = store.settings()

    assert store.rules_text(settings) is None
    ruleset = store.ruleset(settings)
    assert [r.name for r in ruleset.rules] == ["default"]
    assert ruleset.mirror == ("ORTHANC-PROBE",)


def test_apply_rules_writes_and_returns_the_ruleset(store: ConfigStore) -> None:
    ruleset = store.apply_rules(RULES.rstrip("\n"))

    assert [r.name for r in ruleset.rules] == ["mr-to-orthanc2", "default"]
    assert store.rules_path.read_text() == RULES  # with its final newline
    assert [r.name for r in store.ruleset(store.settings()).rules] == [
        "mr-to-orthanc2", "default"]


@pytest.mark.parametrize("text, line, words", [
    (RULES.replace("{Modality: MR}", "{Modality: {regex: '('}}"), 3, "invalid regex"),
    (RULES.replace("[ORTHANC2]", "[ORTHANC7]"), 2, "ORTHANC7"),
    (RULES.replace("group: storage", "group: archive"), 5, "archive"),
    (RULES.replace("Modality: MR", "Modalityy: MR"), 3, "Modalityy"),
    ("rules:\n  - name: x\n   route: [ORTHANC1]\n", 3, "YAML"),
])
def test_apply_rules_refuses_an_invalid_document_and_keeps_the_old_rules(
        store: ConfigStore, text: str, line: int, words: str) -> None:
    store.apply_rules(RULES)
    before = store.rules_path.read_bytes()

    with pytest.raises(RulesError) as caught:
        store.apply_rules(text)

    assert caught.value.line == line
    assert words in caught.value.message
    assert store.rules_path.read_bytes() == before


def test_apply_rules_refused_first_time_leaves_no_rules_file(store: ConfigStore) -> None:
    with pytest.raises(RulesError):
        store.apply_rules("rules: []\n")

    assert not store.rules_path.exists()


def test_a_broken_rules_file_edited_by_hand_is_a_config_error(store: ConfigStore) -> None:
    store.rules_path.write_text("rules:\n  - name: x\n    route: [NOPE]\n")

    with pytest.raises(ConfigError, match="line 2") as caught:
        store.ruleset(store.settings())

    assert "NOPE" in str(caught.value) and str(store.rules_path) in str(caught.value)


def test_removing_an_endpoint_the_rules_name_is_refused(store: ConfigStore) -> None:
    store.apply_rules(RULES)
    before = store.path.read_bytes()

    with pytest.raises(ConfigError, match="ORTHANC2"):
        store.update(without("ORTHANC2"))

    assert store.path.read_bytes() == before
    assert store.settings().endpoint("ORTHANC2") is not None


def test_removing_the_mirror_endpoint_the_rules_name_is_refused(store: ConfigStore) -> None:
    store.apply_rules(RULES)

    with pytest.raises(ConfigError, match="ORTHANC-PROBE"):
        store.update(without("ORTHANC-PROBE"))


def test_emptying_a_group_the_rules_route_to_is_refused(store: ConfigStore) -> None:
    store.apply_rules("rules:\n  - {name: d, route: {group: probe}}\n")

    with pytest.raises(ConfigError, match="probe"):
        store.update(without("ORTHANC-PROBE"))


def test_removing_an_endpoint_the_rules_do_not_need_is_allowed(store: ConfigStore) -> None:
    store.apply_rules(RULES)

    store.update(without("ORTHANC1"))

    assert store.settings().endpoint("ORTHANC1") is None


# -- fingerprint -------------------------------------------------------------------------------

def test_fingerprint_is_stable_until_a_file_changes(store: ConfigStore) -> None:
    first = store.fingerprint()
    store.settings()
    assert store.fingerprint() == first

    store.update(add("ORTHANC3"))
    second = store.fingerprint()
    assert second != first

    store.apply_rules(RULES)
    third = store.fingerprint()
    assert third != second
    assert third[0] == second[0]  # only the rules part changed

    store.rules_path.write_text(RULES + "# edited by hand\n")
    assert store.fingerprint() != third

    fourth = store.fingerprint()
    store.rules_path.unlink()
    assert store.fingerprint() != fourth
    assert store.fingerprint()[1] is None


def test_fingerprint_sees_a_hand_edit_of_dde_yaml(store: ConfigStore) -> None:
    first = store.fingerprint()

    with open(store.path, "a") as out:
        out.write("# a comment\n")

    assert store.fingerprint() != first


def test_a_running_core_refuses_a_strategy_typo_and_keeps_routing(
        store: ConfigStore, caplog: pytest.LogCaptureFixture) -> None:
    core = RouterCore.for_tool(store)
    try:
        text = store.path.read_text()
        store.path.write_text(text.replace("strategy: least-loaded", "strategy: least-laoded"))

        assert core.reload() is False
        assert core.settings.routing.strategy == Strategy.LEAST_LOADED
        assert "least-laoded" in caplog.text and "refused" in caplog.text
        instance = generated()
        result = core.pipeline.ingest(instance.incoming())
        assert result.ok, result.detail
    finally:
        core.close()
