"""PostgreSQL stopped and started again under load, with the router's ledger on it.

A sender sends one association after another, as a modality does, each time the files not
yet acknowledged (DCMTK's storescu ends an association at the first refusal). While the
database is down every attempt gets a failure status (0xA700), never a success; once it is
back the router goes on without a restart; every acknowledged instance ends in its storage
and the probe.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support import router as support
from tests.support.faults import (
    StorescuRun,
    ledger_sop_instance_uids,
    sop_instance_uid,
    start_storescu,
)
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import free_port, wait_until
from tests.support.postgres import PostgresServer, remove_postgres, start_postgres
from tests.support.router import ROUTER_AET, RouterProcess

from dde.store.ledger import Ledger
from dde.synthetic import write_series

pytestmark = pytest.mark.integration

FILES = 200


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    remove_postgres(server)


def failures(log: str) -> int:
    return sum(1 for line in log.splitlines()
               if line.startswith("I: Received Store Response") and "Success" not in line)


def test_postgresql_down_under_load_means_failure_statuses_and_nothing_acknowledged_lost(
        orthanc_factory: OrthancFactory, own_postgres: PostgresServer, tmp_path: Path) -> None:
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    url = own_postgres.create_database()
    home, port = tmp_path / "router-home", free_port()
    support.write_router_home(home, support.router_settings(
        [storage], probe, port=port, web={"enabled": False},
        store={"backend": "postgresql", "url": url}))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    ledger: Ledger | None = None
    files = write_series(tmp_path / "files", FILES)
    acknowledged: set[Path] = set()
    refused_while_down = 0
    runs = 0

    def one_run() -> StorescuRun:
        nonlocal runs
        runs += 1
        rest = [f for f in files if f not in acknowledged]
        run = start_storescu(rest, port, ROUTER_AET, tmp_path / f"storescu-{runs}.log")
        run.wait(180)
        acknowledged.update(run.acknowledged())
        return run

    sender = start_storescu(files, port, ROUTER_AET, tmp_path / "storescu-0.log")
    try:
        wait_until(lambda: len(sender.acknowledged()) >= 40, 60, "the first acknowledgements")
        own_postgres.stop()
        sender.wait(120)
        acknowledged.update(sender.acknowledged())
        assert failures(sender.log()) == 1, "the database went down: a failure status"
        for _ in range(3):  # still down: refused again, nothing acknowledged
            run = one_run()
            assert run.acknowledged() == [] and failures(run.log()) == 1, run.log()[-2000:]
            refused_while_down += 1
        own_postgres.start(initialise=False)
        deadline = runs + 20
        while len(acknowledged) < FILES and runs < deadline:
            one_run()  # the first may meet a connection the restart broke: refused, resent

        assert refused_while_down == 3 and len(acknowledged) == FILES
        uids = {sop_instance_uid(f) for f in acknowledged}
        ledger = Ledger(url=url)
        assert uids <= ledger_sop_instance_uids(ledger)
        wait_until(lambda: support.ledger_idle(ledger), 120, "every delivery settled")
        assert uids <= storage.sop_instance_uids()
        assert uids <= probe.sop_instance_uids()
    finally:
        sender.stop()
        support.stop_process_quietly(router)
        if ledger is not None:
            ledger.close()
