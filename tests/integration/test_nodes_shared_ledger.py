"""Two router nodes sharing one PostgreSQL ledger and one spool folder (``store.backend:
postgresql``, ``store.node``, ``spool.folder``), real Orthancs and DCMTK senders.

Both nodes receive halves of the same new study at the same moment: the study is pinned to
one storage. While node1 holds claimed deliveries, its delivering (main) process is frozen
(SIGSTOP: a hung node; its receiver process still answers its sender): node2 delivers
everything node1 received, node1's claimed deliveries once their lease expired (and says
so). Every acknowledged instance ends in its storage and the probe, the ledger has one
delivered delivery per destination per instance, and node1, killed with SIGKILL and
started again, rejoins.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from tests.support import router as support
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, storescu, wait_until
from tests.support.postgres import PostgresServer
from tests.support.router import ROUTER_AET, RouterProcess

from dde.store.ledger import Ledger
from dde.synthetic import write_series

pytestmark = pytest.mark.integration

LEASE_SECONDS = 3.0


def start_node(name: str, tmp_path: Path, url: str, spool: Path,
               storages: list[RunningOrthanc], probe: RunningOrthanc) -> RouterProcess:
    home = tmp_path / name
    port = free_port()
    support.write_router_home(home, support.router_settings(
        storages, probe, port=port, web={"enabled": False},
        store={"backend": "postgresql", "url": url, "node": name},
        spool={"folder": str(spool)},
        delivery={"lease_seconds": LEASE_SECONDS}))
    node = RouterProcess(home, port, tmp_path / f"{name}.log")
    node.start()
    return node


def uids(files: list[Path]) -> set[str]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def test_two_nodes_keep_a_study_together_and_one_finishes_what_a_killed_one_left(
        orthanc_factory: OrthancFactory, postgres_server: PostgresServer,
        tmp_path: Path) -> None:
    storages = [orthanc_factory("ORTHANC1"), orthanc_factory("ORTHANC2")]
    probe = orthanc_factory("ORTHANC-PROBE")
    url = postgres_server.create_database()
    spool = tmp_path / "shared-spool"
    ledger = Ledger(url=url)
    nodes = [start_node(name, tmp_path, url, spool, storages, probe)
             for name in ("node1", "node2")]
    try:
        study = generate_uid()
        halves = [write_series(tmp_path / f"half{i}", 30, study_uid=study, prefix=f"h{i}-")
                  for i in (1, 2)]
        errors: list[BaseException] = []

        def send(files: list[Path], node: RouterProcess) -> None:
            try:
                storescu(files, node.port, ROUTER_AET)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        senders = [threading.Thread(target=send, args=(half, node))
                   for half, node in zip(halves, nodes, strict=True)]
        for thread in senders:
            thread.start()
        wait_until(lambda: any(owner.startswith("node1/")
                               for owner in ledger.queue.claims().values()),
                   60, "node1 holding claimed deliveries")
        frozen = nodes[0].process
        assert frozen is not None
        os.kill(frozen.pid, signal.SIGSTOP)  # node1 hangs with its claims
        for thread in senders:
            thread.join(120)
        assert errors == [], errors
        acknowledged = uids(halves[0]) | uids(halves[1])
        assert ledger.diagnostics.count("instances") == 60

        wait_until(lambda: support.ledger_idle(ledger), 60 + 2 * LEASE_SECONDS,
                   "node2 delivering what node1 received and claimed")
        assert "claimed after another worker's lease expired" in (
            tmp_path / "node2.log").read_text()
        holders = [s for s in storages if s.sop_instance_uids()]
        assert len(holders) == 1, "the study was split across storages"
        assert holders[0].sop_instance_uids() == acknowledged
        assert probe.sop_instance_uids() == acknowledged
        deliveries = ledger.diagnostics.deliveries()
        assert {d.state for d in deliveries} == {"delivered"}
        per_destination = [(d.instance_id, d.endpoint) for d in deliveries]
        assert len(per_destination) == len(set(per_destination)) == 2 * 60

        nodes[0].kill()  # SIGKILL works on a stopped process
        nodes[0].start()  # rejoins
        more = write_series(tmp_path / "more", 5, study_uid=study, prefix="m-")
        storescu(more, nodes[0].port, ROUTER_AET)
        wait_until(lambda: support.ledger_idle(ledger), 60, "the rejoined node delivering")
        assert uids(more) <= holders[0].sop_instance_uids()
        assert uids(more) <= probe.sop_instance_uids()
    finally:
        for node in nodes:
            support.stop_process_quietly(node)
        ledger.close()
        postgres_server.drop_database(url)
