"""The router process dies (``kill -9``) in the middle of a live configuration change.

Endpoint changes go through :mod:`dde.endpoints.registry` (what ``dde endpoints …`` and the
API call): they rewrite ``dde.yaml`` under a lock with tmp + fsync + rename, and the running
router applies them within a second. While storescu sends in the background, the test drains
and enables ORTHANC2 and adds and removes a third storage endpoint (a stopped Orthanc), then
kills the router right after a change was written and before it was applied. After the
restart the configuration still loads and every instance that got a success response is in
exactly one storage and in the probe.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.datagen import write_studies
from tests.support.faults import (
    ledger_sop_instance_uids,
    sop_instance_uid,
    sop_instance_uids,
    start_storescu,
    state_counts,
)
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, wait_until
from tests.support.router import (
    ROUTER_AET,
    RouterProcess,
    endpoint_for,
    router_settings,
    stop_process_quietly,
    write_router_home,
)

from dde.config import EndpointSettings, EndpointState, Home, load_settings
from dde.config_store import ConfigStore
from dde.endpoints import registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APPLIED = "configuration applied"


def _applied_count(router: RouterProcess) -> int:
    return router.log_path.read_text(errors="replace").count(APPLIED)


def _ledger_instance_count(router: RouterProcess) -> int:
    ledger = router.ledger()
    try:
        return ledger.diagnostics.count("instances")
    finally:
        ledger.close()


def test_kill_9_during_a_configuration_change_keeps_the_config_and_every_instance(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    storage1 = orthanc_factory("ORTHANC1")
    storage2 = orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    spare = orthanc_factory("ORTHANC3")
    spare.stop()  # the third endpoint points at a stopped Orthanc: what goes to it waits
    storages: list[RunningOrthanc] = [storage1, storage2]
    third = EndpointSettings.model_validate(endpoint_for(spare, ["storage"]))

    home = tmp_path / "router-home"
    port = free_port()
    write_router_home(home, router_settings(storages, probe, port=port))
    router = RouterProcess(home, port, tmp_path / "router.log")
    router.start()
    store = ConfigStore(Home(home))
    ledger = router.ledger()
    try:
        # 20 studies of 5: new studies keep arriving while the storage group changes.
        files = [f for paths in write_studies(tmp_path / "files", 20, 5, rows=256,
                                              columns=256).values() for f in paths]
        total = len(files)
        run = start_storescu(files, port, ROUTER_AET, tmp_path / "storescu.log")
        changes = ["drain ORTHANC2", "add ORTHANC3", "enable ORTHANC2", "remove ORTHANC3"]

        def change(name: str) -> None:
            if name == "drain ORTHANC2":
                registry.set_state(store, storage2.name, EndpointState.DRAINING)
            elif name == "add ORTHANC3":
                registry.add_endpoint(store, third)
            elif name == "enable ORTHANC2":
                registry.set_state(store, storage2.name, EndpointState.ENABLED)
            else:
                registry.remove_endpoint(store, ledger, spare.name, force=True)

        applied: list[str] = []
        killed_after: str | None = None
        try:
            # Apply changes one after the other, each waited for in the router's log, until
            # a third of the files are in; then write one more and kill before it is applied.
            for step in range(40):
                name = changes[step % len(changes)]
                before = _applied_count(router)
                change(name)
                if step >= 2 and _ledger_instance_count(router) >= total // 3:
                    router.kill()
                    killed_after = name
                    break
                wait_until(lambda: _applied_count(router) > before, 10,  # noqa: B023
                           f"the router applying '{name}'")
                applied.append(name)
            assert killed_after is not None, "the router was never killed"
            code = run.wait(60)
        finally:
            run.stop()
        acknowledged = {sop_instance_uid(f) for f in run.acknowledged()}
        attempted = run.log().count("I: Sending file:")
        assert acknowledged, "nothing was acknowledged before the kill"

        # The configuration written by the last change is whole and valid.
        settings = load_settings(Home(home))
        names = [e.name for e in settings.endpoints]
        assert storage1.name in names and storage2.name in names and probe.name in names
        in_ledger = ledger_sop_instance_uids(ledger)
        assert not acknowledged - in_ledger, "acknowledged instances missing from the ledger"

        router.start()
        # Back to the starting point: ORTHANC2 enabled, the third endpoint gone (what waited
        # for it is redirected to another storage).
        registry.set_state(store, storage2.name, EndpointState.ENABLED)
        if store.settings().endpoint(spare.name) is not None:
            registry.remove_endpoint(store, ledger, spare.name, force=True)
        router.wait_idle(90)
        assert set(state_counts(ledger)) == {"delivered"}

        held = [s.sop_instance_uids() for s in storages]
        in_probe = probe.sop_instance_uids()
        delivered = {uid for uid in acknowledged
                     if uid in in_probe and sum(uid in h for h in held) == 1}
        lost = acknowledged - delivered
        redirected = sum(int(e[5]) for e in ledger.event_log.events(limit=1_000_000)
                         if e[2] == "endpoint-redirected")
        print(f"\nkill -9 during a configuration change: {total} files, {attempted} sent, "
              f"{len(acknowledged)} acknowledged, {len(delivered)} delivered once + probe, "
              f"{len(lost)} lost; {len(applied)} changes applied before the kill, killed "
              f"right after writing '{killed_after}'; {redirected} deliveries redirected from "
              f"{spare.name} on removal; storescu exit code {code}; "
              f"dde.yaml after the kill: {names}")
        assert not lost, f"{len(lost)} acknowledged, not in exactly one storage + the probe"
        # also the ones committed but never acknowledged
        held_all = set().union(*held)
        assert in_ledger <= held_all and in_ledger <= in_probe
        assert set(sop_instance_uids(files)) >= in_ledger
        assert len(router.history) == 2
    finally:
        ledger.close()
        stop_process_quietly(router)
