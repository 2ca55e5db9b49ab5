"""Fixtures of the unit tests: a ledger and a spool in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dde.store.ledger import Ledger
from dde.store.spool import Spool


@pytest.fixture(autouse=True)
def no_web_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The web part's variables of the developer's shell never leak into unit tests."""
    for variable in ("DDE_WEB_HOST", "DDE_WEB_PORT", "DDE_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    book = Ledger(tmp_path / "dde.sqlite3")
    yield book
    book.close()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")
