"""The router with its ledger on PostgreSQL (``store.backend: postgresql``), end to end:
DCMTK's storescu sends, the router acknowledges, delivers to a real Orthanc and the probe,
``dde where`` reads the same ledger, and a ``kill -9`` of the router loses nothing that
was acknowledged. PostgreSQL is Debian's, started by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import free_port, storescu, wait_until
from tests.support.postgres import PostgresServer
from tests.support.router import (
    ROUTER_AET,
    RouterProcess,
    ledger_idle,
    router_settings,
    stop_process_quietly,
    write_router_home,
)

from dde.store.ledger import Ledger
from dde.synthetic import write_series

pytestmark = pytest.mark.integration


def dde(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("DDE_HOME", None)
    return subprocess.run([sys.executable, "-m", "dde", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_a_router_on_postgresql_receives_delivers_and_survives_kill_9(
        orthanc_factory: OrthancFactory, postgres_server: PostgresServer,
        tmp_path: Path) -> None:
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    url = postgres_server.create_database()
    home = tmp_path / "router-home"
    port = free_port()
    write_router_home(home, router_settings(
        [storage], probe, port=port, web={"enabled": False},
        store={"backend": "postgresql", "url": url}))
    router = RouterProcess(home, port, tmp_path / "router.log")
    ledger = Ledger(url=url)
    try:
        router.start()
        first = write_series(tmp_path / "first", 10)
        storescu(first, port, ROUTER_AET)
        router.kill()  # right after the acknowledgements: deliveries may be half done
        assert not (home / "dde.sqlite3").exists(), "the ledger went to SQLite"
        assert ledger.diagnostics.count("instances") == 10  # every acknowledged one

        router.start()
        second = write_series(tmp_path / "second", 5)
        storescu(second, port, ROUTER_AET)
        wait_until(lambda: ledger_idle(ledger), 60, "every delivery settled")

        sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                for f in [*first, *second]}
        assert storage.sop_instance_uids() == sent
        assert probe.sop_instance_uids() == sent
        states = {d.state for d in ledger.diagnostics.deliveries()}
        assert states == {"delivered"}

        uid = sorted(sent)[0]
        result = dde(home, "where", uid, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        assert {(d["endpoint"], d["state"]) for d in document["deliveries"]} == {
            ("ORTHANC1", "delivered"), ("ORTHANC-PROBE", "delivered")}
    finally:
        stop_process_quietly(router)
        ledger.close()
        postgres_server.drop_database(url)
