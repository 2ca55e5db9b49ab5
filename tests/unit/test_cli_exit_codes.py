"""The ``dde`` command's exit codes: one table maps the project's exceptions to them, one
boundary (every group of the tree) applies it, and every command that opens the ledger
says "locked" with 3 and "damaged" with 4, in one line, without a traceback."""

from __future__ import annotations

import errno
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner, Result
from pydantic import ValidationError
from tests.support.unitkit import bundled_file

import dde.reconcile
from dde.cli import main
from dde.cli.boundary import CommandGroup
from dde.cli.errors import CliError, ExitCode, exit_code_of, exit_codes, translate
from dde.config import ConfigError, EndpointSettings
from dde.endpoints.registry import EndpointError
from dde.receiving.pool import ReceiverStartError
from dde.reconcile import ReconcileError
from dde.routing.explain import ExplainError
from dde.routing.rules import RulesError
from dde.stack.errors import StackError
from dde.store.database import Database
from dde.store.diagnostics import hold_exclusive_lock
from dde.store.errors import LedgerCorrupt, LedgerError, LedgerLocked
from dde.store.ledger import Ledger
from dde.web.auth import TokenError

# -- the table ------------------------------------------------------------------------------


def _validation_error() -> ValidationError:
    try:
        EndpointSettings(name="X", aet="X", host="h", port="not a port")  # type: ignore[arg-type]
    except ValidationError as exc:
        return exc
    raise AssertionError("EndpointSettings accepted a port that is not a number")


TABLE: list[tuple[BaseException, ExitCode]] = [
    (LedgerLocked("locked by another process"), ExitCode.LEDGER_LOCKED),
    (LedgerCorrupt("damaged"), ExitCode.LEDGER_CORRUPT),
    (LedgerError("disk I/O error"), ExitCode.ERROR),
    (ConfigError("dde.yaml: invalid"), ExitCode.ERROR),
    (TokenError("the token file is empty"), ExitCode.ERROR),
    (RulesError("invalid regex", 3), ExitCode.ERROR),
    (EndpointError("no endpoint NOPE"), ExitCode.ERROR),
    (ExplainError("not a DICOM file"), ExitCode.ERROR),
    (ReconcileError("cannot list ORTHANC1"), ExitCode.ERROR),
    (StackError("unknown part NOPE"), ExitCode.ERROR),
    (OSError(errno.EADDRINUSE, "Address already in use"), ExitCode.ERROR),
    (ReceiverStartError("receiver process 0 did not start"), ExitCode.ERROR),
    (_validation_error(), ExitCode.ERROR),
]


def test_the_exit_codes_are_the_documented_ones() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0, "ERROR": 1, "USAGE": 2, "LEDGER_LOCKED": 3, "LEDGER_CORRUPT": 4,
        "DIFFERENCES": 5,
    }


@pytest.mark.parametrize(("exc", "code"), TABLE, ids=lambda v: type(v).__name__)
def test_each_exception_maps_to_its_exit_code(exc: BaseException, code: ExitCode) -> None:
    assert exit_code_of(exc) == code
    error = translate(exc)
    assert isinstance(error, CliError)
    assert error.exit_code == code
    assert error.message and "\n" not in error.message


def test_the_table_names_the_project_exceptions_once() -> None:
    assert set(exit_codes()) >= {LedgerLocked, LedgerCorrupt, LedgerError, ConfigError,
                                 RulesError, EndpointError, ExplainError, ReconcileError,
                                 StackError, OSError}


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("a bug"),
                                 click.ClickException("click's own"),
                                 BrokenPipeError(errno.EPIPE, "Broken pipe")],
                         ids=lambda v: type(v).__name__)
def test_what_is_not_in_the_table_is_not_translated(exc: BaseException) -> None:
    assert translate(exc) is None


def test_an_os_error_names_its_file_and_a_note_follows_the_message() -> None:
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "rules.yaml")
    assert str(translate(missing)) == "rules.yaml: No such file or directory"
    rules = RulesError("invalid regex", 3)
    rules.add_note("new.yaml: the previous rules stay")
    translated = translate(rules)
    assert translated is not None
    assert translated.message == "line 3: invalid regex; new.yaml: the previous rules stay"


# -- the boundary ---------------------------------------------------------------------------


def _group_raising(exc: BaseException) -> click.Group:
    @click.group(cls=CommandGroup)
    def root() -> None:
        """A root group."""

    @root.group()
    def inner() -> None:
        """A nested group, as `dde endpoints`."""

    @inner.command()
    def fail() -> None:
        raise exc

    return root


def assert_one_line_error(result: Result, code: int, fragment: str = "") -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dde: error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(("exc", "code"), TABLE, ids=lambda v: type(v).__name__)
def test_the_boundary_applies_the_table_in_nested_groups(exc: BaseException,
                                                         code: ExitCode) -> None:
    result = CliRunner().invoke(_group_raising(exc), ["inner", "fail"])

    assert_one_line_error(result, code)
    assert result.stdout == ""


def test_a_bug_keeps_its_traceback() -> None:
    result = CliRunner().invoke(_group_raising(ValueError("a bug")), ["inner", "fail"])

    assert isinstance(result.exception, ValueError)
    assert "dde: error:" not in result.stderr


def test_every_group_of_the_tree_is_a_boundary() -> None:
    def groups(command: click.Command) -> Iterator[click.Command]:
        if isinstance(command, click.Group):
            yield command
            for sub in command.commands.values():
                yield from groups(sub)

    found = list(groups(main))
    assert len(found) >= 6  # dde, stack, queue, endpoints, rules, route
    assert all(isinstance(g, CommandGroup) for g in found)


# -- every command answers -h ----------------------------------------------------------------


def _command_paths(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[
        tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _command_paths(sub, (*path, name))


COMMAND_PATHS = list(_command_paths(main))


def test_the_tree_holds_every_command() -> None:
    assert {" ".join(p) for p in COMMAND_PATHS} >= {
        "", "serve", "send", "where", "generate", "token", "queue", "queue retry",
        "stack", "stack up", "stack down", "stack status", "stack logs",
        "endpoints", "endpoints list", "endpoints add", "endpoints drain", "endpoints enable",
        "endpoints disable", "endpoints remove", "rules", "rules show", "rules apply",
        "route", "route explain", "reconcile",
    }


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "dde")
def test_every_command_answers_dash_h(path: tuple[str, ...], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--home", str(tmp_path), *path, "-h"])

    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert not (tmp_path / "dde.sqlite3").exists()


@pytest.mark.parametrize("args", [["where"], ["no-such-command"], ["queue", "--limit", "x"],
                                  ["endpoints", "add", "X"]])
def test_wrong_usage_is_click_s_exit_2(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--home", str(tmp_path), *args])

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output


# -- a locked or damaged ledger, from every command that opens it ----------------------------

LEDGER_COMMANDS: list[list[str]] = [
    ["where", "1.2.3.4"],
    ["queue"],
    ["queue", "--json"],
    ["queue", "retry", "--failed"],
    ["endpoints", "list"],
    ["endpoints", "remove", "ORTHANC2"],
    ["route", "explain", str(bundled_file("CT_small.dcm"))],
    ["reconcile", "--repair"],
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A state folder with an (empty) ledger and the default configuration."""
    folder = tmp_path / "home"
    folder.mkdir()
    Ledger(folder / "dde.sqlite3").close()
    return folder


@pytest.fixture(autouse=True)
def quick_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ledgers give up on a lock after 0.2 s instead of 5 s (the test's lock never goes)."""
    original = Database.__init__

    def opening_quickly(self: Database, path: Path, open_timeout: float = 5.0) -> None:
        original(self, path, min(open_timeout, 0.2))

    monkeypatch.setattr(Database, "__init__", opening_quickly)


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def ids(args: list[str]) -> str:
    return " ".join(a if "/" not in a else Path(a).name for a in args)


@pytest.mark.parametrize("args", LEDGER_COMMANDS, ids=ids)
def test_a_locked_ledger_exits_3(home: Path, args: list[str]) -> None:
    with hold_exclusive_lock(home / "dde.sqlite3"):
        result = run(home, *args)

    assert_one_line_error(result, ExitCode.LEDGER_LOCKED, "locked by another process")
    assert result.stdout == ""


@pytest.mark.parametrize("args", LEDGER_COMMANDS, ids=ids)
def test_a_damaged_ledger_exits_4_and_is_left_as_it_is(home: Path, args: list[str]) -> None:
    database = home / "dde.sqlite3"
    garbage = b"not a database " * 1000
    database.write_bytes(garbage)

    result = run(home, *args)

    assert_one_line_error(result, ExitCode.LEDGER_CORRUPT, "damaged")
    assert result.stdout == ""
    assert database.read_bytes() == garbage


def test_endpoints_list_on_a_locked_ledger_exits_3_not_1(home: Path) -> None:
    """It exited 1: its own error class swallowed the ledger's kind of failure."""
    with hold_exclusive_lock(home / "dde.sqlite3"):
        result = run(home, "endpoints", "list", "--json")

    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("dde: error: ")


def test_endpoints_list_without_a_ledger_lists_the_configuration(tmp_path: Path) -> None:
    result = run(tmp_path, "endpoints", "list", "--json")

    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == [
        "ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]
    assert not (tmp_path / "dde.sqlite3").exists()


# -- the other translations, through real commands ------------------------------------------


def test_an_unknown_endpoint_exits_1(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "endpoints", "drain", "NOPE"), 1, "NOPE")


def test_an_invalid_endpoint_value_exits_1(tmp_path: Path) -> None:
    result = run(tmp_path, "endpoints", "add", "X", "--aet", "X", "--host", "h", "--port", "1",
                 "--kind", "orthanc-rest")

    assert_one_line_error(result, 1, "url")


def test_invalid_rules_exit_1_and_the_previous_rules_stay(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: broken\n    when: {Modality: {regex: '('}}\n"
                   "    route: [ORTHANC1]\n")

    result = run(tmp_path / "home", "rules", "apply", str(bad))

    assert_one_line_error(result, 1, "line 3")
    assert "the previous rules stay" in result.stderr
    assert not (tmp_path / "home" / "rules.yaml").exists()


def test_a_missing_rules_file_exits_1_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"

    assert_one_line_error(run(tmp_path, "rules", "apply", str(missing)), 1, str(missing))


def test_an_invalid_configuration_exits_1(tmp_path: Path) -> None:
    (tmp_path / "dde.yaml").write_text("endpoints: 42\n")

    assert_one_line_error(run(tmp_path, "endpoints", "list"), 1)


def test_serve_exits_1_when_the_receiver_cannot_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dde.runtime.main

    class PortTaken:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def serve_forever(self) -> None:
            raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(dde.runtime.main, "RouterApp", PortTaken)
    monkeypatch.setattr("dde.logs.configure", lambda verbose: None)

    assert_one_line_error(run(tmp_path, "serve"), 1, "Address already in use")


# -- reconcile: differences are 5 -------------------------------------------------------------


def fake_orthancs(holdings: dict[str, list[str]]) -> Callable[[EndpointSettings], httpx.Client]:
    """Orthanc REST APIs (``GET /instances``) holding the given instance ids, by endpoint."""
    def factory(endpoint: EndpointSettings) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path != "/instances":
                return httpx.Response(404)
            since = int(request.url.params.get("since", "0"))
            return httpx.Response(200, json=holdings[endpoint.name][since:])

        return httpx.Client(transport=httpx.MockTransport(handler))

    return factory


def with_orthancs(monkeypatch: pytest.MonkeyPatch, holdings: dict[str, list[str]]) -> None:
    real = dde.reconcile.reconcile
    monkeypatch.setattr(dde.reconcile, "reconcile",
                        functools.partial(real, client_factory=fake_orthancs(holdings)))


def test_reconcile_exits_5_when_the_probe_misses_instances(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_orthancs(monkeypatch, {"ORTHANC1": ["a", "b"], "ORTHANC2": ["c"],
                                "ORTHANC-PROBE": ["a", "c"]})

    result = run(tmp_path, "reconcile", "--json")

    assert result.exit_code == ExitCode.DIFFERENCES == 5, result.output
    report = json.loads(result.stdout)
    assert report["missing_in_probe"] == {"ORTHANC-PROBE": 1}
    assert report["consistent"] is False
    assert result.stderr == ""


def test_reconcile_exits_0_when_the_probe_holds_everything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_orthancs(monkeypatch, {"ORTHANC1": ["a"], "ORTHANC2": ["c"],
                                "ORTHANC-PROBE": ["a", "c"]})

    result = run(tmp_path, "reconcile")

    assert result.exit_code == 0, result.output
    assert "probe ORTHANC-PROBE: 2 instances, 0 missing" in result.stdout


def test_reconcile_that_cannot_list_exits_1(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with_orthancs(monkeypatch, {"ORTHANC1": ["a"], "ORTHANC2": [], "ORTHANC-PROBE": []})
    (tmp_path / "dde.yaml").write_text("routing:\n  mirror: []\n")

    assert_one_line_error(run(tmp_path, "reconcile"), 1, "no probe")
