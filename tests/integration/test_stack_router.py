"""The whole reference deployment through ``dde stack``: three Orthancs and the router as
detached processes on free ports, a router crash (kill -9) and its restart, logs, shutdown.

Everything is driven through the ``dde`` command in child processes, as a user would.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import dcmread
from tests.support.datagen import write_series
from tests.support.orthanc import free_port, storescu, wait_until
from tests.support.router import ROUTER_AET, ledger_idle
from tests.support.stackcli import dde
from tests.support.stackcli import stack_status as status

from dde.stack.process import proc_cmdline
from dde.store.ledger import Ledger

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORTHANCS = ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]
PARTS = [*ORTHANCS, "router"]
CONFIG_FILES = ["orthanc_storage_1.json", "orthanc_storage_2.json", "orthanc_probe.json"]


def alive(pid: int) -> bool:
    return proc_cmdline(pid) is not None  # a zombie counts as gone


@pytest.fixture
def stack_home(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A state folder whose dde.yaml puts every part of the stack on free ports.

    Teardown runs ``dde stack down``, then kills by PID whatever part this test saw that is
    still alive (only if its command line still names this home or its Orthanc configs).
    """
    home = tmp_path / "home"
    home.mkdir()
    orthancs = [{"name": name, "aet": name, "dicom_port": free_port(),
                 "http_port": free_port(), "config_file": config}
                for name, config in zip(ORTHANCS, CONFIG_FILES, strict=True)]
    config = {
        "receiver": {"host": "127.0.0.1", "port": free_port()},
        "web": {"host": "127.0.0.1", "port": free_port()},
        "endpoints": [
            {"name": o["name"], "aet": o["aet"], "host": "127.0.0.1", "port": o["dicom_port"],
             "url": f"http://127.0.0.1:{o['http_port']}",
             "groups": ["probe" if o["name"] == "ORTHANC-PROBE" else "storage"]}
            for o in orthancs
        ],
        "routing": {"mirror": ["ORTHANC-PROBE"], "load_refresh_seconds": 0.5},
        "delivery": {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 2.0,
                     "idle_release_seconds": 0.5, "poll_seconds": 0.2},
        "stack": {"orthancs": orthancs},
    }
    (home / "dde.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    seen: set[int] = set()
    try:
        yield home, {"config": config, "seen": seen}
    finally:
        dde(home, "stack", "down")
        for pid in seen:
            cmdline = proc_cmdline(pid)
            if cmdline and any(str(home) in arg for arg in cmdline):
                os.kill(pid, signal.SIGKILL)


def orthanc_uids(http_port: int) -> set[str]:
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10,
                      trust_env=False) as client:
        instances = client.get("/instances?expand").json()
    return {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in instances}


def wait_delivered(home: Path, config: dict[str, Any], uids: set[str]) -> None:
    ports = {o["name"]: o["http_port"] for o in config["stack"]["orthancs"]}
    ledger = Ledger(home / "dde.sqlite3")
    try:
        wait_until(lambda: ledger_idle(ledger), 60, "every delivery settled")
    finally:
        ledger.close()
    wait_until(lambda: uids <= orthanc_uids(ports["ORTHANC-PROBE"]), 30, "probe holds all")
    in_storages = orthanc_uids(ports["ORTHANC1"]) | orthanc_uids(ports["ORTHANC2"])
    assert uids <= in_storages


def test_stack_up_send_crash_restart_logs_down(
    stack_home: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    home, context = stack_home
    config, seen = context["config"], context["seen"]
    router_port = config["receiver"]["port"]

    started = dde(home, "stack", "up", "--detach")
    assert started.returncode == 0, started.stdout + started.stderr
    for part in PARTS:
        assert f"started {part}" in started.stdout, started.stdout

    parts = status(home)
    assert sorted(parts) == sorted(PARTS)
    pids = {name: parts[name]["pid"] for name in PARTS}
    seen.update(pids.values())
    for name in PARTS:
        assert parts[name]["running"] is True, parts
        assert isinstance(pids[name], int) and alive(pids[name]), name
    assert len(set(pids.values())) == 4
    web_port = config["web"]["port"]
    assert parts["router"]["ports"] == [router_port, web_port]
    # the router serves HTTP, with the token printed by `stack up`
    token = (home / "api-token").read_text().strip()
    assert f"web UI and API: http://127.0.0.1:{web_port}" in started.stdout
    assert f"API token: {token}" in started.stdout
    assert dde(home, "token").stdout.strip() == token
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", trust_env=False) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/endpoints").status_code == 401
        listed = client.get("/api/endpoints", headers={"Authorization": f"Bearer {token}"})
        assert [e["name"] for e in listed.json()] == ORTHANCS
    router_cmdline = proc_cmdline(pids["router"])
    assert router_cmdline is not None and router_cmdline[-1] == "serve"
    assert str(home) in router_cmdline

    # an empty second home sees nothing running, and stopping it stops nothing of ours
    other = tmp_path / "other-home"
    other_parts = status(other)
    assert not any(info["running"] or info["pid"] for info in other_parts.values()), other_parts
    stopped_other = dde(other, "stack", "down")
    assert stopped_other.returncode == 0 and "stopped nothing" in stopped_other.stdout
    assert {name: info["pid"] for name, info in status(home).items()} == pids

    first = write_series(tmp_path / "first", 5)
    storescu(first, router_port, ROUTER_AET)
    first_uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in first}
    wait_delivered(home, config, first_uids)

    # the router crashes; the Orthancs keep running
    os.kill(pids["router"], signal.SIGKILL)
    wait_until(lambda: not status(home)["router"]["running"], 20, "router seen as stopped")
    after_crash = status(home)
    assert after_crash["router"]["pid"] is None
    assert {n: after_crash[n]["pid"] for n in ORTHANCS} == {n: pids[n] for n in ORTHANCS}

    restarted = dde(home, "stack", "up", "--detach")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "started router" in restarted.stdout
    for name in ORTHANCS:
        assert f"{name} was already running" in restarted.stdout, restarted.stdout
        assert f"started {name}" not in restarted.stdout
    parts = status(home)
    new_router = parts["router"]["pid"]
    seen.add(new_router)
    assert parts["router"]["running"] and new_router != pids["router"] and alive(new_router)
    assert {n: parts[n]["pid"] for n in ORTHANCS} == {n: pids[n] for n in ORTHANCS}

    second = write_series(tmp_path / "second", 3)
    storescu(second, router_port, ROUTER_AET)
    second_uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in second}
    wait_delivered(home, config, first_uids | second_uids)

    logs = dde(home, "stack", "logs", "router")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert sum("receiving as DYNAMIC_DICOM_MW" in line for line in lines) == 2, logs.stdout
    assert sum("received instance" in line for line in lines) == 8, logs.stdout
    assert not any("Orthanc" in line for line in lines), "another part's lines in the log"

    down = dde(home, "stack", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for part in PARTS:
        assert part in down.stdout, down.stdout
    assert not any(info["running"] for info in status(home).values())
    def all_gone() -> bool:
        return not any(alive(pid) for pid in [*pids.values(), new_router])

    wait_until(all_gone, 15, "every process of the stack gone")
    assert list((home / "run").iterdir()) == []
