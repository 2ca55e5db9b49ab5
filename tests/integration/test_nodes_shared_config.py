"""Two router nodes on one PostgreSQL ledger share their endpoints and rules (issue 13): the
real ``dde endpoints add`` and ``dde rules apply``, run against node1's state folder only,
are in force on node2 — its API lists the endpoint, its running router routes by the new
rule and delivers to the new endpoint, and its own files are brought up to date.

The promise is "within 2 s"; each wait here allows 3 s after the command returned (the
promise plus 1 s for the test's own polling, the API call and a DCMTK sender's start on a
2-core machine shared with other tests), and says how long it took when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from tests.support import router as support
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, storescu, wait_until
from tests.support.postgres import PostgresServer
from tests.support.router import ROUTER_AET, RouterProcess
from tests.support.unitkit import MR_RULES as RULES

from dde.config import Home
from dde.store.ledger import Ledger
from dde.synthetic import write_series
from dde.web.auth import load_token

pytestmark = pytest.mark.integration

SHARED_WITHIN_SECONDS = 3.0
"""2 s promised, plus 1 s of margin for the test's own polling (see the module docstring)."""

def dde(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m dde --home HOME ARGS`` as a user runs it."""
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("DDE_HOME", None)
    result = subprocess.run([sys.executable, "-m", "dde", "--home", str(home), *args],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def start_node(name: str, tmp_path: Path, url: str, storages: list[RunningOrthanc],
               probe: RunningOrthanc, web: dict[str, Any]) -> RouterProcess:
    home = tmp_path / name
    port = free_port()
    support.write_router_home(home, support.router_settings(
        storages, probe, port=port, web=web,
        store={"backend": "postgresql", "url": url, "node": name},
        spool={"folder": str(tmp_path / "shared-spool")}))
    node = RouterProcess(home, port, tmp_path / f"{name}.log")
    node.start()
    return node


def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/api/endpoints").status_code == 200
    except httpx.TransportError:
        return False


def within_promise(condition: Any, what: str, since: float) -> float:
    """Poll ``condition`` until it holds; the seconds since ``since`` it took."""
    wait_until(condition, SHARED_WITHIN_SECONDS - (time.monotonic() - since), what)
    return time.monotonic() - since


def test_an_endpoint_and_rules_changed_on_node1_are_in_force_on_node2(
        orthanc_factory: OrthancFactory, postgres_server: PostgresServer,
        tmp_path: Path) -> None:
    storage1, storage2 = orthanc_factory("ORTHANC1"), orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    url = postgres_server.create_database()
    web_port = free_port()
    node1 = start_node("node1", tmp_path, url, [storage1], probe, {"enabled": False})
    node2 = start_node("node2", tmp_path, url, [storage1], probe,
                       {"enabled": True, "port": web_port})
    ledger = Ledger(url=url)
    token = load_token(Home(node2.home), create=False)
    api = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", trust_env=False, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
    try:
        def node2_lists(name: str) -> bool:
            return name in {e["name"] for e in api.get("/api/endpoints").json()}

        wait_until(lambda: _answers(api), 20, "node2's web server answers")
        assert not node2_lists("ORTHANC2")

        dde(node1.home, "endpoints", "add", "ORTHANC2", "--aet", storage2.aet,
            "--host", "127.0.0.1", "--port", str(storage2.dicom_port), "--url", storage2.url,
            "--group", "storage")
        added = time.monotonic()
        within_promise(lambda: node2_lists("ORTHANC2"), "node2's API lists ORTHANC2", added)
        within_promise(lambda: "added: ORTHANC2" in (tmp_path / "node2.log").read_text(),
                       "node2's router applies ORTHANC2", added)

        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(RULES)
        dde(node1.home, "rules", "apply", str(rules_file))
        applied = time.monotonic()
        sent: list[Path] = []

        def routed_by_the_new_rule() -> bool:
            """One new MR instance through node2: True once its rule is the new one."""
            files = write_series(tmp_path / f"mr{len(sent)}", 1, modality="MR")
            sent.extend(files)
            storescu(files, node2.port, ROUTER_AET)
            uid = str(dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
            return ledger.operators.where(uid)[0].rule == "mr-to-orthanc2"

        took = within_promise(routed_by_the_new_rule, "node2 routes MR to ORTHANC2", applied)
        last = str(dcmread(sent[-1], stop_before_pixels=True).SOPInstanceUID)
        storage2.wait_for_sop_instance_uids({last})  # delivered by the cluster to ORTHANC2
        assert took <= SHARED_WITHIN_SECONDS

        # node2's own files, its copies of the shared configuration, are up to date
        home2 = Home(node2.home)
        assert home2.rules_file.read_text() == RULES
        names = [e["name"] for e in support.load_yaml(home2.config_file)["endpoints"]]
        assert names == ["ORTHANC1", "ORTHANC-PROBE", "ORTHANC2"]
        listed = dde(node2.home, "endpoints", "list", "--json").stdout
        assert '"ORTHANC2"' in listed
    finally:
        api.close()
        for node in (node1, node2):
            support.stop_process_quietly(node)
        ledger.close()
        postgres_server.drop_database(url)
