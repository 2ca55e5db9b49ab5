"""``dde send`` sends to the router of the state folder by default: its port and AE title
from ``dde.yaml`` and the ``DDE_*`` overrides; explicit options win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import dde.sending
from dde.cli import main
from dde.sending import FileResult


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def sent_to(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Where ``dde send`` sent (host, port, called and calling AE), no network."""
    calls: list[dict[str, Any]] = []

    def fake_send_files(files: list[Path], **kwargs: Any) -> list[FileResult]:
        calls.append({k: kwargs[k] for k in ("host", "port", "called_aet", "calling_aet")})
        return [FileResult(path, True, "sent") for path in files]

    monkeypatch.setattr(dde.sending, "send_files", fake_send_files)
    return calls


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "one.dcm"
    path.write_bytes(b"\0" * 10)
    return path


def send(*args: str) -> Result:
    return CliRunner().invoke(main, [*args], catch_exceptions=False)


def test_the_state_folder_s_router_is_the_default(tmp_path: Path, a_file: Path,
                                                   sent_to: list[dict[str, Any]]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dde.yaml").write_text("receiver:\n  ae_title: SITE_ROUTER\n  port: 11999\n")

    result = send("--home", str(home), "send", str(a_file))

    assert result.exit_code == 0, result.output
    assert sent_to == [{"host": "127.0.0.1", "port": 11999, "called_aet": "SITE_ROUTER",
                        "calling_aet": "DDE_SEND"}]


def test_dde_home_is_the_default_state_folder(tmp_path: Path, a_file: Path,
                                              sent_to: list[dict[str, Any]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "elsewhere"
    home.mkdir()
    (home / "dde.yaml").write_text("receiver:\n  port: 12111\n")
    monkeypatch.setenv("DDE_HOME", str(home))

    result = send("send", str(a_file))

    assert result.exit_code == 0, result.output
    assert (sent_to[0]["port"], sent_to[0]["called_aet"]) == (12111, "DYNAMIC_DICOM_MW")


def test_a_receiver_on_one_address_is_sent_to_there(tmp_path: Path, a_file: Path,
                                                     sent_to: list[dict[str, Any]]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dde.yaml").write_text("receiver:\n  host: 127.0.0.7\n")

    assert send("--home", str(home), "send", str(a_file)).exit_code == 0
    assert (sent_to[0]["host"], sent_to[0]["port"]) == ("127.0.0.7", 11113)


def test_the_environment_overrides_apply(tmp_path: Path, a_file: Path,
                                         sent_to: list[dict[str, Any]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dde.yaml").write_text("receiver:\n  port: 11999\n")
    monkeypatch.setenv("DDE_DICOM_PORT", "13013")
    monkeypatch.setenv("DDE_AE_TITLE", "FROM_ENV")

    assert send("--home", str(home), "send", str(a_file)).exit_code == 0
    assert (sent_to[0]["port"], sent_to[0]["called_aet"]) == (13013, "FROM_ENV")


def test_explicit_options_win(tmp_path: Path, a_file: Path,
                              sent_to: list[dict[str, Any]]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dde.yaml").write_text("receiver:\n  ae_title: SITE_ROUTER\n  port: 11999\n")

    result = send("--home", str(home), "send", str(a_file), "--host", "10.0.0.5",
                  "--port", "104", "--aec", "OTHER_PACS", "--aet", "ME")

    assert result.exit_code == 0, result.output
    assert sent_to == [{"host": "10.0.0.5", "port": 104, "called_aet": "OTHER_PACS",
                        "calling_aet": "ME"}]


def test_a_fresh_state_folder_gives_the_defaults_and_writes_nothing(
        tmp_path: Path, a_file: Path, sent_to: list[dict[str, Any]]) -> None:
    home = tmp_path / "fresh"

    assert send("--home", str(home), "send", str(a_file)).exit_code == 0
    assert sent_to[0] == {"host": "127.0.0.1", "port": 11113,
                          "called_aet": "DYNAMIC_DICOM_MW", "calling_aet": "DDE_SEND"}
    assert not (home / "dde.yaml").exists()


def test_an_invalid_configuration_is_one_error(tmp_path: Path, a_file: Path,
                                               sent_to: list[dict[str, Any]]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dde.yaml").write_text("receiver:\n  port: not-a-port\n")

    result = CliRunner().invoke(main, ["--home", str(home), "send", str(a_file)])

    assert result.exit_code == 1
    assert result.stderr.startswith("dde: error: ") and "receiver.port" in result.stderr
    assert sent_to == []


def test_receiver_picks_one_of_the_routers_receivers(tmp_path: Path, a_file: Path,
                                                     sent_to: list[dict[str, Any]]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dde.yaml").write_text(
        "receivers:\n  - {name: cardio, ae_title: DDE_CARDIO, host: 10.0.0.5, port: 11114}\n")

    result = send("--home", str(home), "send", str(a_file), "--receiver", "cardio")

    assert result.exit_code == 0, result.output
    assert sent_to == [{"host": "10.0.0.5", "port": 11114, "called_aet": "DDE_CARDIO",
                        "calling_aet": "DDE_SEND"}]
    unknown = CliRunner().invoke(main, ["--home", str(home), "send", str(a_file),
                                        "--receiver", "nobody"])
    assert unknown.exit_code == 2 and "no receiver 'nobody'" in unknown.output
