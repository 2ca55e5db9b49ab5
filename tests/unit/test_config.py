"""Settings: defaults on first use, environment overrides, validation, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dde.config import (
    CONFIG_FILE_NAME,
    ConfigError,
    Home,
    Settings,
    Strategy,
    load_settings,
    parse_settings,
    settings_to_yaml,
)

PASSWORD = "Pa55-never-print"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME"):
        monkeypatch.delenv(variable, raising=False)


def endpoint(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "aet": name[:16], "port": 4242, "groups": ["storage"], **extra}


def test_first_use_writes_the_defaults_and_reads_them_back_equal(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")

    first = load_settings(home)

    assert home.config_file == home.root / CONFIG_FILE_NAME
    assert home.config_file.exists()
    assert not list(home.root.glob("*.part"))
    assert first == Settings()
    assert load_settings(home) == first
    assert first.receiver.ae_title == "DYNAMIC_DICOM_MW"
    assert first.receiver.port == 11113
    assert [e.name for e in first.endpoints] == ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]
    assert first.routing.mirror == ["ORTHANC-PROBE"]


def test_an_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("receiver:\n  ae_title: MY_ROUTER\n")

    settings = load_settings(home)

    assert settings.receiver.ae_title == "MY_ROUTER"
    assert home.config_file.read_text() == "receiver:\n  ae_title: MY_ROUTER\n"


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("")

    assert load_settings(home) == Settings()


def test_environment_overrides_port_and_ae_title(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("receiver:\n  ae_title: FROM_FILE\n  port: 104\n")
    monkeypatch.setenv("DDE_DICOM_PORT", "11999")
    monkeypatch.setenv("DDE_AE_TITLE", "FROM_ENV")
    monkeypatch.setenv("DDE_DICOM_HOST", "127.0.0.1")

    settings = load_settings(home)

    assert (settings.receiver.port, settings.receiver.ae_title, settings.receiver.host) == (
        11999, "FROM_ENV", "127.0.0.1")


def test_environment_overrides_are_not_written_into_the_defaults_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path)
    monkeypatch.setenv("DDE_DICOM_PORT", "11999")
    monkeypatch.setenv("DDE_AE_TITLE", "FROM_ENV")

    assert load_settings(home).receiver.port == 11999
    written = yaml.safe_load(home.config_file.read_text())
    assert written["receiver"]["port"] == 11113
    assert written["receiver"]["ae_title"] == "DYNAMIC_DICOM_MW"

    monkeypatch.delenv("DDE_DICOM_PORT")
    monkeypatch.delenv("DDE_AE_TITLE")
    assert load_settings(home).receiver.port == 11113


def test_a_port_variable_that_is_not_a_number_names_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDE_DICOM_PORT", "eleven")

    with pytest.raises(ConfigError, match="DDE_DICOM_PORT"):
        parse_settings({})


def test_an_out_of_range_port_variable_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDE_DICOM_PORT", "70000")

    with pytest.raises(ConfigError, match=r"receiver\.port"):
        parse_settings({})


def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("receiver: [unclosed\n  port: 1\n")

    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_settings(home)

    assert str(home.config_file) in str(caught.value)


def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("- just\n- a list\n")

    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(home)


@pytest.mark.parametrize(("raw", "field"), [
    ({"receiver": {"port": "not-a-port"}}, "receiver.port"),
    ({"receiver": {"port": 70000}}, "receiver.port"),
    ({"receiver": {"ae_title": "A" * 17}}, "receiver.ae_title"),
    ({"delivery": {"max_attempts": 0}}, "delivery.max_attempts"),
    ({"delivery": {"backoff_base_seconds": -1}}, "delivery.backoff_base_seconds"),
    ({"endpoints": [endpoint("ORTHANC1", weight=0)]}, "endpoints.0.weight"),
    ({"endpoints": [endpoint("ORTHANC1", port=0)]}, "endpoints.0.port"),
    ({"endpoints": [endpoint("has space")]}, "endpoints.0.name"),
    ({"endpoints": [endpoint("OK", aet="BACK\\SLASH")]}, "endpoints.0.aet"),
    ({"routing": {"unknown_key": 1}}, "routing.unknown_key"),
    ({"routing": {"strategy": "least-laoded"}}, "routing.strategy"),
    ({"routing": {"strategy": "Least-Loaded"}}, "routing.strategy"),
    ({"no_such_section": {}}, "no_such_section"),
])
def test_invalid_values_are_config_errors_naming_the_field(raw: dict[str, object],
                                                           field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, "dde.yaml")

    message = str(caught.value)
    assert message.startswith("dde.yaml: ")
    assert f"{field}:" in message


def test_an_invalid_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text("delivery:\n  batch_size: 0\n")

    with pytest.raises(ConfigError, match=r"dde\.yaml: delivery\.batch_size"):
        load_settings(home)


def test_a_missing_explicit_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_settings(Home(tmp_path), tmp_path / "missing.yaml")
    assert not (tmp_path / CONFIG_FILE_NAME).exists()


def test_duplicate_endpoint_names_are_refused() -> None:
    raw = {"endpoints": [endpoint("ORTHANC1"), endpoint("ORTHANC2"), endpoint("ORTHANC1")]}

    with pytest.raises(ConfigError, match="endpoint names must be unique: ORTHANC1"):
        parse_settings(raw)


def test_passwords_survive_the_yaml_round_trip(tmp_path: Path) -> None:
    settings = parse_settings({"endpoints": [
        endpoint("ORTHANC1", username="router", password=PASSWORD),
        endpoint("ORTHANC2"),
    ]})

    text = settings_to_yaml(settings)
    again = parse_settings(yaml.safe_load(text))

    assert again == settings
    first = again.endpoints[0]
    assert first.password is not None and first.password.get_secret_value() == PASSWORD
    assert again.endpoints[1].password is None
    assert "**********" not in text


def test_passwords_never_show_when_settings_are_printed_or_dumped() -> None:
    settings = parse_settings({"endpoints": [
        endpoint("ORTHANC1", username="router", password=PASSWORD)]})

    shown = [str(settings), repr(settings), str(settings.endpoints[0]),
             json.dumps(settings.model_dump(mode="json")), settings.model_dump_json()]

    assert all(PASSWORD not in text for text in shown)


def test_home_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Home.resolve(None).root == (tmp_path / "var").resolve()
    monkeypatch.setenv("DDE_HOME", str(tmp_path / "from-env"))
    assert Home.resolve(None).root == (tmp_path / "from-env").resolve()
    assert Home.resolve(str(tmp_path / "option")).root == (tmp_path / "option").resolve()


def test_home_paths_stay_inside_the_state_folder(tmp_path: Path) -> None:
    home = Home(tmp_path / "state")

    home.ensure()

    for path in (home.config_file, home.spool_dir, home.database, home.logs_dir,
                 home.run_dir, home.orthanc_dir):
        assert path.is_relative_to(home.root)
    assert home.spool_dir.is_dir() and home.logs_dir.is_dir() and home.run_dir.is_dir()


def test_endpoint_lookup_by_name() -> None:
    settings = Settings()

    assert settings.endpoint("ORTHANC2") is not None
    assert settings.endpoint("nobody") is None


def test_the_web_part_defaults_and_its_environment_overrides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path)
    web = load_settings(home).web
    assert (web.enabled, web.host, web.port, web.max_upload_bytes) == (
        True, "0.0.0.0", 8080, 512 * 1024 * 1024)

    monkeypatch.setenv("DDE_WEB_PORT", "18080")
    monkeypatch.setenv("DDE_WEB_HOST", "127.0.0.1")
    monkeypatch.setenv("DDE_DICOM_PORT", "11999")
    settings = load_settings(home)
    assert (settings.web.host, settings.web.port, settings.receiver.port) == (
        "127.0.0.1", 18080, 11999)
    assert yaml.safe_load(home.config_file.read_text())["web"]["port"] == 8080

    monkeypatch.setenv("DDE_WEB_PORT", "http")
    with pytest.raises(ConfigError, match="DDE_WEB_PORT"):
        load_settings(home)


def test_the_strategies_are_a_closed_set_read_as_the_enum() -> None:
    for name in ("least-loaded", "round-robin", "weighted"):
        assert parse_settings({"routing": {"strategy": name}}).routing.strategy == Strategy(name)
