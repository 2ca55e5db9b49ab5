"""The ``deidentify:`` rule action, validated (dde.routing.deidentify_action), and the named
secret its salt comes from (dde.config.secrets): the variable first, then the file under
the state folder; messages say where, never the value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dde.config.secrets import SecretError, read_secret, secret_variable
from dde.dicom.deid_table import DeidOption
from dde.dicom.deidentify import Profile, SafePrivate
from dde.routing.deidentify_action import (
    DeidentifyAction,
    load_profile,
    parse_deidentify,
    resolve_deidentify,
)

SALT_TEXT = "s3cret-salt-value"


def write_secret(home: Path, name: str, text: str) -> Path:
    (home / "secrets").mkdir(exist_ok=True)
    path = home / "secrets" / name
    path.write_text(text)
    return path


def test_the_variable_wins_over_the_file(tmp_path: Path) -> None:
    write_secret(tmp_path, "research", "from-file\n")
    assert read_secret("research", tmp_path, {}) == b"from-file"
    assert secret_variable("research-2") == "DDE_SECRET_RESEARCH_2"
    assert read_secret("research", tmp_path, {"DDE_SECRET_RESEARCH": " from-env "}) \
        == b"from-env"


def test_a_missing_or_empty_secret_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="DDE_SECRET_RESEARCH.*secrets/research"):
        read_secret("research", tmp_path, {})
    write_secret(tmp_path, "research", "  \n")
    with pytest.raises(SecretError, match="is empty"):
        read_secret("research", tmp_path, {})
    with pytest.raises(SecretError, match="is empty"):
        read_secret("research", tmp_path, {"DDE_SECRET_RESEARCH": ""})
    with pytest.raises(SecretError, match="letters, digits"):
        read_secret("../dde", tmp_path, {})


def test_a_valid_action_parses() -> None:
    action = parse_deidentify({"profile": "basic", "salt_secret": "research",
                               "options": ["retain-longitudinal-dates", "retain-uids"]})
    assert action == DeidentifyAction(
        options=frozenset({DeidOption.RETAIN_LONGITUDINAL_DATES, DeidOption.RETAIN_UIDS}),
        salt_secret="research")
    assert parse_deidentify({"salt_secret": "r", "allow_burned_in": True}) == \
        DeidentifyAction(options=frozenset(), salt_secret="r", allow_burned_in=True)
    safe = parse_deidentify({"salt_secret": "r", "options": ["retain-safe-private"],
                             "safe_private": ["GEMS_PARM_01 (0043,xx39)"]})
    assert isinstance(safe, DeidentifyAction)
    assert safe.safe_private == {SafePrivate("GEMS_PARM_01", 0x0043, 0x39)}
    assert safe.profile(b"salt").safe_private == safe.safe_private


@pytest.mark.parametrize(("value", "message"), [
    ("basic", "a mapping"),
    ({"salt_secret": "r", "profil": "basic"}, "unknown key 'profil'"),
    ({"salt_secret": "r", "profile": "strict"}, r"unknown profile 'strict' \(basic\)"),
    ({"salt_secret": "r", "options": "retain-uids"}, "options is a list"),
    ({"salt_secret": "r", "options": ["retain-all"]}, "unknown option 'retain-all'.*valid: "
                                                      "retain-device-identity"),
    ({"salt_secret": "r", "options": ["clean-descriptors"]}, "not offered"),
    ({"salt_secret": "r", "options": ["retain-safe-private"]}, "none is listed"),
    ({"salt_secret": "r", "safe_private": ["GEMS (0043,xx39)"]}, "used with the option"),
    ({"salt_secret": "r", "options": ["retain-safe-private"], "safe_private": ["(0043,1039)"]},
     "CREATOR \\(gggg,xxyy\\)"),
    ({"salt_secret": "r", "safe_private": "GEMS (0043,xx39)"}, "safe_private is a list"),
    ({"options": []}, "salt_secret names the secret"),
    ({"salt_secret": "a/b"}, "salt_secret names the secret"),
    ({"salt_secret": "r", "allow_burned_in": "yes"}, "true or false"),
])
def test_what_is_wrong_is_said(value: object, message: str) -> None:
    result = parse_deidentify(value)
    assert isinstance(result, str)
    assert result.startswith("deidentify: ")
    assert re.search(message, result), result


def test_the_profile_gets_its_salt_from_the_secret(tmp_path: Path) -> None:
    write_secret(tmp_path, "research", SALT_TEXT)
    value = {"salt_secret": "research", "options": ["retain-uids"]}
    profile = resolve_deidentify(value, tmp_path, {})
    assert profile == Profile(SALT_TEXT.encode(), frozenset({DeidOption.RETAIN_UIDS}))
    action = parse_deidentify(value)
    assert isinstance(action, DeidentifyAction)
    assert load_profile(action, tmp_path, {}).salt == SALT_TEXT.encode()
    assert SALT_TEXT not in repr(profile)


def test_a_missing_secret_is_a_message_without_any_value(tmp_path: Path) -> None:
    message = resolve_deidentify({"salt_secret": "research"}, tmp_path,
                                 {"DDE_SECRET_OTHER": SALT_TEXT})
    assert isinstance(message, str)
    assert message.startswith("deidentify: secret 'research'")
    assert SALT_TEXT not in message
