"""A ledger that cannot be used at start: ``dde serve`` says why in one line and exits with a
code of its own (3 locked, 4 damaged); it never resets or rewrites the file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.orthanc import free_port
from tests.support.router import RouterProcess, router_settings, write_router_home
from tests.support.unitkit import ingest_to

from dde.cli.errors import EXIT_LEDGER_CORRUPT, EXIT_LEDGER_LOCKED
from dde.store.diagnostics import hold_exclusive_lock
from dde.store.ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _home(tmp_path: Path) -> tuple[Path, int]:
    home = tmp_path / "home"
    port = free_port()
    write_router_home(home, router_settings([], None, port=port, web={"enabled": False}))
    return home, port


def _serve(home: Path, timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dde", "--home", str(home), "serve"],
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "TCP_NODELAY": "1"})
    return result, time.monotonic() - started


def _assert_one_line_error(result: subprocess.CompletedProcess[str], code: int,
                           fragment: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("dde: error:")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]


def test_garbage_ledger_exits_4_and_is_left_byte_identical(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)
    database = home / "dde.sqlite3"
    garbage = os.urandom(64 * 1024)
    database.write_bytes(garbage)

    result, seconds = _serve(home)

    _assert_one_line_error(result, EXIT_LEDGER_CORRUPT, "damaged")
    assert database.read_bytes() == garbage
    print(f"\ngarbage ledger: exit {result.returncode} in {seconds:.1f} s: "
          f"{result.stderr.strip()}")


def test_ledger_damaged_inside_exits_4_and_is_left_byte_identical(tmp_path: Path) -> None:
    """A valid SQLite header, but pages overwritten: found by ``PRAGMA quick_check``."""
    home, _ = _home(tmp_path)
    database = home / "dde.sqlite3"
    ledger = Ledger(database)
    ledger.diagnostics.checkpoint()
    ledger.close()
    damaged = bytearray(database.read_bytes())
    page_size = int.from_bytes(damaged[16:18], "big")
    assert len(damaged) >= 3 * page_size
    damaged[page_size:] = b"\xa5" * (len(damaged) - page_size)  # every page but the first
    database.write_bytes(bytes(damaged))

    result, seconds = _serve(home)

    _assert_one_line_error(result, EXIT_LEDGER_CORRUPT, "damaged")
    assert database.read_bytes() == bytes(damaged)
    print(f"\ndamaged ledger: exit {result.returncode} in {seconds:.1f} s: "
          f"{result.stderr.strip()}")


def test_ledger_locked_by_another_process_exits_3_then_serves_once_free(
        tmp_path: Path) -> None:
    home, port = _home(tmp_path)
    database = home / "dde.sqlite3"
    ledger = Ledger(database)
    marker = ingest_to(ledger, [], sop_instance_uid="2.25.424242", spool_path="marker.dcm")
    ledger.close()

    with hold_exclusive_lock(database):
        result, seconds = _serve(home)
        _assert_one_line_error(result, EXIT_LEDGER_LOCKED, "locked by another process")
    print(f"\nlocked ledger: exit {result.returncode} in {seconds:.1f} s: "
          f"{result.stderr.strip()}")

    # Once the lock is gone the router starts on the same ledger, its rows untouched.
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    try:
        check = Ledger(database)
        try:
            rows = check.operators.where("2.25.424242")
        finally:
            check.close()
        assert [(r.id, r.sop_instance_uid) for r in rows] == [(marker, "2.25.424242")]
    finally:
        assert router.terminate() == 0
