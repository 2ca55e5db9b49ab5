"""The ``dde`` command as a user runs it, for the stack's integration tests: a child
process with a clean environment (no ``DDE_*`` override of the test run leaks in)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from dde.stack.process import proc_cmdline

_CLEARED = ("DDE_HOME", "DDE_API_TOKEN", "DDE_WEB_PORT", "DDE_WEB_HOST", "DDE_STORE_URL",
            "DDE_STORE_BACKEND", "DDE_STORE_NODE", "DDE_SPOOL_FOLDER")


def dde(home: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """``python -m dde --home HOME ARGS``; never a traceback."""
    env = {**os.environ, "COLUMNS": "200"}
    for variable in _CLEARED:
        env.pop(variable, None)
    result = subprocess.run([sys.executable, "-m", "dde", "--home", str(home), *args],
                            capture_output=True, text=True, timeout=timeout, env=env,
                            check=False)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def stack_status(home: Path) -> dict[str, dict[str, Any]]:
    """``dde stack status --json``: {part: {pid, running, ports, log, config}}."""
    result = dde(home, "stack", "status", "--json")
    assert result.returncode == 0, result.stderr
    parts: dict[str, dict[str, Any]] = json.loads(result.stdout)
    return parts


def kill_processes_naming(folder: Path) -> None:
    """SIGKILL every process whose command line names ``folder`` (what a failed test left
    running of its stack)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmdline = proc_cmdline(int(entry.name))
            if cmdline and any(str(folder) in arg for arg in cmdline):
                os.kill(int(entry.name), signal.SIGKILL)
