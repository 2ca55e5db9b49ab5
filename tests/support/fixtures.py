"""Pytest fixtures shared by every test folder (registered by ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.orthanc import RunningOrthanc, start_orthanc


class OrthancFactory(Protocol):
    def __call__(self, name: str = "ORTHANC1", aet: str | None = None) -> RunningOrthanc: ...


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[OrthancFactory]:
    """Start real Orthancs on free loopback ports: ``orthanc_factory(name, aet=None)``.

    Each has its own storage under ``tmp_path``; all are killed at teardown (their storage
    is thrown away, so there is nothing to shut down gracefully).
    """
    started: list[RunningOrthanc] = []

    def factory(name: str = "ORTHANC1", aet: str | None = None) -> RunningOrthanc:
        folder = tmp_path / "orthancs" / f"{len(started):02d}-{name}"
        orthanc = start_orthanc(folder, name, aet)
        started.append(orthanc)
        return orthanc

    yield factory
    for orthanc in started:
        orthanc.kill()
