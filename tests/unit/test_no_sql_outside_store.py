"""SQL lives in the repositories of ``src/dde/store`` and nowhere else: no SQL statement in a
string and no ``import sqlite3`` in the rest of ``src/dde``, in the tests (but the store's
own: ``test_ledger.py``, ``test_store_*.py``) or in the benchmarks. Tests read and set up the
ledger through its repositories (``ledger.diagnostics`` for what only tests ask)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "src" / "dde" / "store"
HERE = Path(__file__).resolve()

SQL = re.compile(r"\b(SELECT\s+.+?\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
                 r"|PRAGMA\s+\w+|BEGIN\s+(IMMEDIATE|EXCLUSIVE))\b", re.DOTALL)
"""A statement's opening words, as SQL writes them (upper case); prose does not match."""

PENDING: dict[str, str] = {}
"""Findings allowed for a while (``{file: finding}``), each removed once its file is clean;
empty now."""


def scanned_files() -> Iterator[Path]:
    for path in sorted((ROOT / "src" / "dde").rglob("*.py")):
        if STORE not in path.parents:
            yield path
    for path in sorted((ROOT / "tests").rglob("*.py")):
        unit = path.parent == ROOT / "tests" / "unit"
        if path.resolve() == HERE or (unit and (path.name == "test_ledger.py"
                                                or path.name.startswith("test_store_"))):
            continue
        yield path
    yield from sorted((ROOT / "benchmarks").rglob("*.py"))


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                found.add(id(body[0].value))
    return found


def strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal but docstrings; an f-string as one text, its
    replacement fields as ``{}``."""
    skip = docstrings(tree)
    inside_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                inside_fstrings.add(id(value))
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    parts.append(value.value)
                else:
                    parts.append("{}")
            yield node.lineno, "".join(parts)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in skip and id(node) not in inside_fstrings):
            yield node.lineno, node.value


def findings_in(source: str, name: str) -> list[str]:
    """``name:line: what`` for each SQL statement in a string and each import of sqlite3."""
    tree = ast.parse(source, filename=name)
    found: set[tuple[int, str]] = set()
    for line, text in strings(tree):
        match = SQL.search(text)
        if match:
            found.add((line, f"SQL in a string: {' '.join(match.group(0).split())[:60]!r}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sqlite3"
                                                for a in node.names):
            found.add((node.lineno, "import sqlite3"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
            found.add((node.lineno, "import sqlite3"))
    return [f"{name}:{line}: {what}" for line, what in sorted(found)]


def all_findings() -> dict[str, list[str]]:
    """{file relative to the repository: its findings}, for files with any."""
    result: dict[str, list[str]] = {}
    for path in scanned_files():
        name = path.relative_to(ROOT).as_posix()
        found = findings_in(path.read_text(encoding="utf-8"), name)
        if found:
            result[name] = found
    return result


def test_the_scan_flags_a_planted_example_and_not_prose() -> None:
    planted = '''"""A docstring that mentions PRAGMA quick_check and SELECT x FROM y."""
import os
import sqlite3
from sqlite3 import connect

# SELECT id FROM instances  (a comment: not counted)


def f(table: str) -> None:
    """INSERT INTO t ... in a docstring: not counted."""
    os.getcwd()
    connect(":memory:").execute("SELECT id, state"
                                " FROM deliveries WHERE id = ?", (1,))
    query = f"SELECT COUNT(*) FROM {table}"
    other = "UPDATE deliveries SET state = 'failed'"
    lock = "BEGIN EXCLUSIVE"
    prose = "select the files from the folder, then update the set"
'''
    assert findings_in(planted, "planted.py") == [
        "planted.py:3: import sqlite3",
        "planted.py:4: import sqlite3",
        "planted.py:12: SQL in a string: 'SELECT id, state FROM'",
        "planted.py:14: SQL in a string: 'SELECT COUNT(*) FROM'",
        "planted.py:15: SQL in a string: 'UPDATE deliveries SET'",
        "planted.py:16: SQL in a string: 'BEGIN EXCLUSIVE'",
    ]


def test_the_scan_covers_src_tests_and_benchmarks_but_not_the_store() -> None:
    scanned = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    assert "src/dde/config/settings.py" in scanned
    assert "src/dde/web/health.py" in scanned
    assert "tests/support/faults.py" in scanned
    assert "benchmarks/throughput.py" in scanned
    assert "tests/unit/test_web_api.py" in scanned
    assert not any(name.startswith("src/dde/store/") for name in scanned)
    assert "tests/unit/test_ledger.py" not in scanned
    assert "tests/unit/test_store_diagnostics.py" not in scanned
    assert "tests/unit/test_no_sql_outside_store.py" not in scanned


def test_no_sql_outside_the_store() -> None:
    found = all_findings()
    unexpected = [line for name, lines in found.items() for line in lines
                  if name not in PENDING or not line.endswith(f": {PENDING[name]}")]
    assert not unexpected, ("SQL outside src/dde/store (ask a repository of the ledger, "
                            "e.g. ledger.diagnostics):\n" + "\n".join(unexpected))


def test_the_pending_list_is_not_stale() -> None:
    found = all_findings()
    stale = [name for name in PENDING if name not in found]
    assert not stale, f"clean now, remove from PENDING: {stale}"
