"""A change through the CLI (``ConfigStore.update``) keeps the user's ``dde.yaml``: its
comments, the order of its keys and endpoints, the values left to their defaults; only
what changed is written, and the result still validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from pydantic import SecretStr

from dde.cli import main
from dde.config import Home, Settings, load_settings, parse_settings
from dde.config_store import ConfigStore

COMMENTED = """\
# Site configuration of the router, edited by hand.
receiver:
  ae_title: SITE_ROUTER   # the AE the modalities call
  port: 11113
endpoints:
  # the main PACS, in the basement
  - name: ORTHANC1
    aet: ORTHANC1     # do not change: the PACS checks it
    port: 4242
    url: http://127.0.0.1:8042
    groups: [storage]
  - name: ORTHANC2
    aet: ORTHANC2
    port: 4243
    url: http://127.0.0.1:8043
    groups: [storage]
  # the probe, monitored by the QA team
  - name: ORTHANC-PROBE
    aet: ORTHANC-PROBE
    port: 4244
    url: http://127.0.0.1:8044
    groups: [probe]
routing:
  mirror: [ORTHANC-PROBE]   # every instance also goes there
# end of the file
"""

COMMENTS = [line.split("#", 1)[1] for line in COMMENTED.splitlines() if "#" in line]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "dde.yaml").write_text(COMMENTED)
    return folder


def dde(home: Path, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output
    return result


def settings_of(home: Path) -> Settings:
    return parse_settings(yaml.safe_load((home / "dde.yaml").read_text()), environment=False)


def test_endpoints_add_keeps_comments_and_order(home: Path) -> None:
    dde(home, "endpoints", "add", "ORTHANC3", "--aet", "ORTHANC3", "--host", "10.1.2.3",
        "--port", "4245", "--group", "storage")

    text = (home / "dde.yaml").read_text()
    assert all(comment in text for comment in COMMENTS), text
    assert text.startswith(COMMENTED.split("routing:")[0])  # untouched up to the new one
    top = [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()]
    assert top == ["receiver", "endpoints", "routing"]  # nothing added that was a default
    settings = settings_of(home)
    assert [e.name for e in settings.endpoints] == ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE",
                                                    "ORTHANC3"]
    added = settings.endpoint("ORTHANC3")
    assert added is not None and (added.host, added.port) == ("10.1.2.3", 4245)
    assert added.groups == ["storage"]
    assert settings.receiver.ae_title == "SITE_ROUTER"


def test_drain_changes_one_line_and_nothing_else(home: Path) -> None:
    dde(home, "endpoints", "drain", "ORTHANC2")

    text = (home / "dde.yaml").read_text()
    before, after = COMMENTED.splitlines(), text.splitlines()
    added = [line for line in after if line not in before]
    assert added == ["    state: draining"], text
    assert [line for line in before if line not in after] == []
    assert after.index("    state: draining") == after.index("    url: http://127.0.0.1:8043") + 2
    settings = settings_of(home)
    assert [e.state.value for e in settings.endpoints] == ["enabled", "draining", "enabled"]

    dde(home, "endpoints", "enable", "ORTHANC2")
    assert settings_of(home).endpoints[1].state.value == "enabled"
    assert all(comment in (home / "dde.yaml").read_text() for comment in COMMENTS)


def test_remove_deletes_the_entry_and_keeps_the_others_comments(home: Path) -> None:
    dde(home, "endpoints", "remove", "ORTHANC2")

    text = (home / "dde.yaml").read_text()
    assert "ORTHANC2" not in text
    assert "# the main PACS, in the basement" in text
    assert "# the probe, monitored by the QA team" in text
    assert "# do not change: the PACS checks it" in text
    assert [e.name for e in settings_of(home).endpoints] == ["ORTHANC1", "ORTHANC-PROBE"]


def test_the_default_file_keeps_its_comment_and_style(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    dde(home, "endpoints", "drain", "ORTHANC1")

    text = (home / "dde.yaml").read_text()
    assert text.startswith("# Dynamic DICOM Endpoints configuration (written with the "
                           "defaults on first use)\n")
    assert "\n- name: ORTHANC1\n" in text  # the block style it was written in
    assert load_settings(Home(home)).endpoints[0].state.value == "draining"


def test_passwords_round_trip_in_clear_never_masked(home: Path) -> None:
    store = ConfigStore(Home(home))

    def set_password(settings: Settings) -> Settings:
        first = settings.endpoints[0].model_copy(
            update={"username": "router", "password": SecretStr("s3cret: with # chars")})
        return settings.model_copy(update={"endpoints": [first, *settings.endpoints[1:]]})

    store.update(set_password)
    dde(home, "endpoints", "drain", "ORTHANC2")  # another change rewrites the file again

    text = (home / "dde.yaml").read_text()
    assert "*****" not in text
    password = settings_of(home).endpoints[0].password
    assert password is not None and password.get_secret_value() == "s3cret: with # chars"
    assert all(comment in text for comment in COMMENTS)


def test_an_indented_style_of_the_user_is_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dde.yaml").write_text(
        "endpoints:\n"
        "    -   name: ORTHANC1  # four and four\n"
        "        aet: ORTHANC1\n"
        "        port: 4242\n"
        "        groups: [storage]\n"
        "    -   name: ORTHANC-PROBE\n"
        "        aet: ORTHANC-PROBE\n"
        "        port: 4244\n"
        "        groups: [probe]\n"
    )
    dde(home, "endpoints", "drain", "ORTHANC1")

    text = (home / "dde.yaml").read_text()
    assert "# four and four" in text
    assert "        state: draining\n" in text, text
    assert settings_of(home).endpoints[0].state.value == "draining"
