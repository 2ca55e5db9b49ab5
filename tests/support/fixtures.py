"""Pytest fixtures shared by every test folder (registered by ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.orthanc import RunningOrthanc, start_orthanc
from tests.support.postgres import PostgresServer, remove_postgres, start_postgres
from tests.support.router import InProcessRouter, router_settings, start_router


class OrthancFactory(Protocol):
    def __call__(self, name: str = "ORTHANC1", aet: str | None = None,
                 extra: dict[str, Any] | None = None) -> RunningOrthanc: ...


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server (Debian's package) for the session, on a Unix socket
    only; each test makes its own database (``create_database``)."""
    server = start_postgres()
    yield server
    remove_postgres(server)


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[OrthancFactory]:
    """Start real Orthancs on free loopback ports: ``orthanc_factory(name, aet=None)``.

    Each has its own storage under ``tmp_path``; all are killed at teardown (their storage
    is thrown away, so there is nothing to shut down gracefully).
    """
    started: list[RunningOrthanc] = []

    def factory(name: str = "ORTHANC1", aet: str | None = None,
                extra: dict[str, Any] | None = None) -> RunningOrthanc:
        folder = tmp_path / "orthancs" / f"{len(started):02d}-{name}"
        orthanc = start_orthanc(folder, name, aet, extra=extra)
        started.append(orthanc)
        return orthanc

    yield factory
    for orthanc in started:
        orthanc.kill()


@dataclass
class ReferenceStack:
    """Three real Orthancs (two storage, one probe) and an in-process router."""

    storage1: RunningOrthanc
    storage2: RunningOrthanc
    probe: RunningOrthanc
    router: InProcessRouter

    @property
    def storages(self) -> list[RunningOrthanc]:
        return [self.storage1, self.storage2]


@pytest.fixture
def reference_stack(orthanc_factory: OrthancFactory, tmp_path: Path) -> Iterator[ReferenceStack]:
    storage1 = orthanc_factory("ORTHANC1")
    storage2 = orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    router = start_router(tmp_path / "router-home",
                          router_settings([storage1, storage2], probe))
    try:
        yield ReferenceStack(storage1, storage2, probe, router)
    finally:
        router.stop()
