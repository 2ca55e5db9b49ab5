"""What the ``dde`` command says when something is off: every error one line
``dde: error: …`` on stderr (usage errors too, with exit 2), messages that say what is
wrong, no pydicom chatter, and paths printed whole."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from pydicom import config, dcmread
from tests.support.unitkit import bundled_file, new_instance

from dde.cli import main
from dde.routing.route import Route
from dde.store.ledger import Ledger


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME"):
        monkeypatch.delenv(variable, raising=False)


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def one_error_line(result: Result) -> str:
    """The one line on stderr, which must read ``dde: error: …``."""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dde: error: "), result.stderr
    assert not any(line.startswith(("Error:", "Usage:")) for line in lines)
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A state folder with a ledger: one instance a discard rule dropped."""
    folder = tmp_path / "home"
    folder.mkdir()
    ledger = Ledger(folder / "dde.sqlite3")
    try:
        dropped = Route("drop-tests", (), (), None, discard=True,
                        reason="discarded by rule drop-tests")
        ledger.intake.ingest(new_instance(sop_instance_uid="1.2.826.0.1.3680043.10.99"),
                             lambda view: dropped)
    finally:
        ledger.close()
    return folder


def test_where_of_a_missing_file_says_it_does_not_exist(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "path.dcm"
    result = run(home, "where", str(missing))

    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"{missing} does not exist" in line
    assert "no instance with SOP Instance UID" not in line


def test_where_of_an_unknown_uid_still_says_so(home: Path) -> None:
    result = run(home, "where", "1.2.3.4.5")

    assert result.exit_code == 1
    assert "no instance with SOP Instance UID 1.2.3.4.5" in one_error_line(result)


def test_where_of_a_discarded_instance_names_the_rule(home: Path) -> None:
    result = run(home, "where", "1.2.826.0.1.3680043.10.99")

    assert result.exit_code == 0, result.output
    assert "discarded by rule drop-tests" in result.stdout
    assert "attempts" not in result.stdout  # no empty deliveries table


def test_explain_of_a_file_that_is_not_dicom_says_it_once(home: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not DICOM at all\n" * 20)
    result = run(home, "route", "explain", str(notes))

    assert result.exit_code == 1
    line = one_error_line(result)
    assert "not a DICOM Part-10 file" in line
    assert line.count("Part-10") == 1, line
    assert line.count("not a DICOM") == 1, line


@pytest.mark.parametrize("command", [["route", "explain"], ["send"]])
def test_a_missing_file_is_dde_error_and_exit_2(home: Path, tmp_path: Path,
                                               command: list[str]) -> None:
    missing = tmp_path / "no-such-file.dcm"
    result = run(home, *command, str(missing))

    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert str(missing) in line


@pytest.mark.parametrize("args", [["where"], ["no-such-command"], ["queue", "--limit", "x"],
                                  ["endpoints", "add", "X"], ["--no-such-option", "queue"]])
def test_usage_errors_read_dde_error_and_exit_2(home: Path, args: list[str]) -> None:
    result = run(home, *args)

    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "-h'" in line  # where to read the usage


def test_route_explain_lets_no_pydicom_warning_out(home: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd.dcm"
    with config.disable_value_validation():
        dataset = dcmread(bundled_file("CT_small.dcm"))
        dataset.StudyInstanceUID = "1.2.3.not-a-uid"
        dataset.AccessionNumber = "A" * 40  # longer than SH allows
        dataset.StudyDate = "2020-01-01"  # not a DA
        dataset.save_as(odd)

    with pytest.warns() as caught:  # nothing escapes to the warnings machinery either
        warnings.warn("sentinel", UserWarning, stacklevel=1)
        result = run(home, "route", "explain", str(odd))

    assert [str(w.message) for w in caught] == ["sentinel"]
    assert "Invalid value" not in result.stderr
    assert "exceeds the maximum length" not in result.stderr
    assert "pydicom" not in result.stderr
    assert result.exit_code == 0, result.output
    assert "rule:" in result.stdout


def test_stack_status_prints_the_whole_log_path(tmp_path: Path) -> None:
    deep = tmp_path / ("a-state-folder-with-a-rather-long-name-" * 3) / "and-one-more-level"
    result = CliRunner().invoke(main, ["--home", str(deep), "stack", "status"])

    assert result.exit_code == 0, result.output
    for name in ("ORTHANC1", "ORTHANC2", "ORTHANC-PROBE", "router"):
        log = str(deep / "logs" / f"{name}.log")
        assert any(log in line for line in result.stdout.splitlines()), result.stdout
