"""Three router nodes behind HAProxy through ``dde stack up --nodes 3``: PostgreSQL, the
nodes and HAProxy from Debian's packages, the three Orthancs, DCMTK senders through the
public DICOM port; one node killed (SIGKILL, its whole process group) under load.

Four senders keep sending through HAProxy (a sender whose association died with the node
sends what was not acknowledged again, in a new association, as a modality does). The node
is killed while it holds claimed deliveries. Then: every acknowledged instance is in exactly
one storage and in the probe, no study is split across storages, the ledger has one
delivered delivery per destination per instance, the dead node's claimed deliveries were
sent by the others once their lease expired, and the node, started again by ``dde stack
up``, rejoins. Everything is driven through the ``dde`` command, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import generate_uid
from tests.support.faults import StorescuRun, start_storescu
from tests.support.orthanc import free_port, free_port_run, storescu, wait_until
from tests.support.router import ROUTER_AET, ledger_idle
from tests.support.stackcli import dde, kill_processes_naming
from tests.support.stackcli import stack_status as status

from dde.store.ledger import Ledger
from dde.synthetic import write_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORTHANCS = ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]
NODES = ["router-1", "router-2", "router-3"]
PARTS = [*ORTHANCS, "postgresql", *NODES, "haproxy"]
LEASE_SECONDS = 5.0
SENDERS = 4
STUDIES_PER_SENDER = 2
INSTANCES_PER_STUDY = 30
FILES_PER_ASSOCIATION = 10


@pytest.fixture
def cluster_home() -> Iterator[tuple[Path, dict[str, Any]]]:
    """A state folder PostgreSQL's own user can reach (``tmp_path`` is private to root),
    whose dde.yaml puts every part on free ports. Teardown: ``dde stack down``, then
    SIGKILL whatever still names this folder."""
    root = Path(tempfile.mkdtemp(prefix="dde-cluster-"))
    os.chmod(root, 0o755)
    home = root / "home"
    home.mkdir()
    orthancs = {name: {"dicom": free_port(), "http": free_port()} for name in ORTHANCS}
    config = {
        "receiver": {"host": "127.0.0.1", "port": free_port_run(len(NODES) + 1)},
        "web": {"host": "127.0.0.1", "port": free_port_run(len(NODES) + 1)},
        "endpoints": [
            {"name": name, "aet": name, "host": "127.0.0.1", "port": ports["dicom"],
             "url": f"http://127.0.0.1:{ports['http']}",
             "groups": ["probe" if name == "ORTHANC-PROBE" else "storage"]}
            for name, ports in orthancs.items()
        ],
        "routing": {"mirror": ["ORTHANC-PROBE"], "strategy": "least-loaded",
                    "load_refresh_seconds": 0.5},
        "delivery": {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 2.0,
                     "idle_release_seconds": 0.5, "poll_seconds": 0.2,
                     "lease_seconds": LEASE_SECONDS},
        "stack": {"orthancs": [
            {"endpoint": "ORTHANC1", "config_file": "orthanc_storage_1.json"},
            {"endpoint": "ORTHANC2", "config_file": "orthanc_storage_2.json"},
            {"endpoint": "ORTHANC-PROBE", "config_file": "orthanc_probe.json"}]},
    }
    (home / "dde.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        yield home, {"config": config, "orthancs": orthancs}
    finally:
        dde(home, "stack", "down")
        kill_processes_naming(home)
        shutil.rmtree(root, ignore_errors=True)


def orthanc_study_uids(http_port: int) -> dict[str, set[str]]:
    """{SOP Instance UID: ...} grouped by study: {study UID: {SOP Instance UIDs}}."""
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10,
                      trust_env=False) as client:
        instances = client.get("/instances?expand&requestedTags=StudyInstanceUID").json()
        studies: dict[str, set[str]] = {}
        for instance in instances:
            parent = client.get(f"/instances/{instance['ID']}/study").json()
            study = str(parent["MainDicomTags"]["StudyInstanceUID"])
            studies.setdefault(study, set()).add(str(instance["MainDicomTags"]
                                                     ["SOPInstanceUID"]))
    return studies


class Sender(threading.Thread):
    """Sends its files through ``port``, one association per ``FILES_PER_ASSOCIATION``,
    again and again until every file is acknowledged (or ``deadline``)."""

    def __init__(self, index: int, files: list[Path], port: int, logs: Path) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index, self.files, self.port, self.logs = index, files, port, logs
        self.acknowledged: set[Path] = set()
        self.runs: list[StorescuRun] = []
        self.failed_associations = 0
        self.deadline = time.monotonic() + 300

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            pending = [f for f in self.files if f not in self.acknowledged]
            if not pending:
                return
            log = self.logs / f"storescu-{self.index}-{len(self.runs):03d}.log"
            run = start_storescu(pending[:FILES_PER_ASSOCIATION], self.port, ROUTER_AET, log)
            self.runs.append(run)
            if run.wait(120) != 0:
                self.failed_associations += 1
            self.acknowledged.update(run.acknowledged())


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_three_nodes_behind_haproxy_one_killed_under_load(
        cluster_home: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    home, context = cluster_home
    config, orthancs = context["config"], context["orthancs"]
    public = config["receiver"]["port"]

    started = dde(home, "stack", "up", "--nodes", "3", "--detach")
    assert started.returncode == 0, started.stdout + started.stderr
    for part in PARTS:
        assert f"started {part}" in started.stdout, started.stdout
    parts = status(home)
    assert sorted(parts) == sorted(PARTS)
    for name in PARTS:
        assert parts[name]["running"] is True and isinstance(parts[name]["pid"], int), parts
    assert parts["haproxy"]["ports"] == [public, config["web"]["port"]]
    assert parts["router-2"]["ports"] == [public + 2, config["web"]["port"] + 2]
    written = yaml.safe_load((home / "dde.yaml").read_text())
    assert written["stack"]["nodes"] == 3 and written["store"]["backend"] == "postgresql"
    # the web port behind HAProxy answers with the main state folder's token
    token = (home / "api-token").read_text().strip()
    with httpx.Client(trust_env=False, timeout=10) as client:
        answer = client.get(f"http://127.0.0.1:{config['web']['port']}/api/endpoints",
                            headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text

    ledger = Ledger(url=written["store"]["url"])
    try:
        studies = {}
        senders = []
        for index in range(SENDERS):
            files: list[Path] = []
            for number in range(STUDIES_PER_SENDER):
                study = generate_uid()
                series = write_series(tmp_path / f"s{index}-{number}", INSTANCES_PER_STUDY,
                                      study_uid=study, prefix=f"s{index}-{number}-")
                studies[study] = {uid_of(f) for f in series}
                files += series
            senders.append(Sender(index, files, public, tmp_path))
        for sender in senders:
            sender.start()

        # Freeze router-2 while it holds claimed deliveries, then kill it: its claims stay.
        victim = parts["router-2"]["pid"]
        left_behind: dict[int, str] = {}
        deadline = time.monotonic() + 120
        while not left_behind:
            assert time.monotonic() < deadline, "router-2 never held a claimed delivery"
            wait_until(lambda: any(o.startswith("router_2/")
                                   for o in ledger.queue.claims().values()),
                       120, "router-2 holding claimed deliveries")
            os.killpg(victim, signal.SIGSTOP)
            left_behind = {d: o for d, o in ledger.queue.claims().items()
                           if o.startswith("router_2/")}
            if not left_behind:
                os.killpg(victim, signal.SIGCONT)
        os.killpg(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        def resumed() -> bool:
            states = {d.id: d.state for d in ledger.diagnostics.deliveries()}
            return all(states[d] == "delivered" for d in left_behind)

        wait_until(resumed, LEASE_SECONDS + 60, "the dead node's claimed deliveries sent")
        resumed_after = time.monotonic() - killed_at
        for sender in senders:
            sender.join(300)
        acknowledged = {uid_of(f) for s in senders for f in s.acknowledged}
        sent = {uid for uids in studies.values() for uid in uids}
        assert acknowledged == sent, f"{len(sent - acknowledged)} never acknowledged"

        wait_until(lambda: ledger_idle(ledger), 120, "every delivery settled")
        storages = {name: orthanc_study_uids(orthancs[name]["http"])
                    for name in ("ORTHANC1", "ORTHANC2")}
        probe = orthanc_study_uids(orthancs["ORTHANC-PROBE"]["http"])
        for study, uids in studies.items():
            holders = [name for name, held in storages.items() if study in held]
            assert len(holders) == 1, f"study split across {holders}"
            assert storages[holders[0]][study] == uids
            assert probe[study] == uids
        in_storages = [uid for held in storages.values() for uids in held.values()
                       for uid in uids]
        assert len(in_storages) == len(set(in_storages)) == len(sent)  # exactly one storage
        deliveries = ledger.diagnostics.deliveries()
        assert {d.state for d in deliveries} == {"delivered"}
        per_destination = [(d.instance_id, d.endpoint) for d in deliveries]
        assert len(per_destination) == len(set(per_destination)) == 2 * len(sent)
        assert ledger.diagnostics.count("instances") == len(sent)
        took_over = "claimed after another worker's lease expired"
        assert any(took_over in (home / "logs" / f"{n}.log").read_text()
                   for n in ("router-1", "router-3"))
        print(f"\nfailover: {len(acknowledged)} acknowledged, {len(sent)} delivered to a "
              f"storage and the probe, 0 lost; {len(left_behind)} claimed deliveries of the "
              f"killed node sent by the others {resumed_after:.1f} s after the kill (lease "
              f"{LEASE_SECONDS:.0f} s); {sum(s.failed_associations for s in senders)} "
              "associations failed with the node and were sent again")

        # router-2 rejoins: `dde stack up` starts only it; it receives and delivers
        again = dde(home, "stack", "up", "--detach")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "started router-2" in again.stdout
        assert "haproxy was already running" in again.stdout
        more = write_series(tmp_path / "more", 5, prefix="more-")
        storescu(more, public + 2, ROUTER_AET)
        wait_until(lambda: ledger_idle(ledger) and ledger.diagnostics.count("instances")
                   == len(sent) + 5, 60, "the rejoined node's instances delivered")
        more_uids = {uid_of(f) for f in more}
        assert more_uids <= {uid for uids in orthanc_study_uids(
            orthancs["ORTHANC-PROBE"]["http"]).values() for uid in uids}
        # any node's state folder reaches the cluster's ledger
        where = dde(home / "nodes" / "router-3", "where", next(iter(more_uids)), "--json")
        assert where.returncode == 0, where.stderr
        assert {d["state"] for d in json.loads(where.stdout)["deliveries"]} == {"delivered"}
    finally:
        ledger.close()

    stopped = dde(home, "stack", "down")
    assert stopped.returncode == 0, stopped.stderr
    assert all(not info["running"] for info in status(home).values())
