"""Issue 3 against real Orthanc: endpoints and rules changed while the router runs,
health, failover and probe reconciliation."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from tests.support.datagen import write_series
from tests.support.faults import BlackHole, deliveries
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, storescu, wait_until
from tests.support.router import InProcessRouter, router_settings, start_router

from dde.config import EndpointSettings, EndpointState
from dde.endpoints import registry

pytestmark = pytest.mark.integration

LIVE = {
    "health": {"interval_seconds": 0.3, "failure_threshold": 2, "failover_after_seconds": 2.0,
               "probe_timeout_seconds": 1.0},
}


def dde(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dde", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def uids(files: list[Path]) -> set[str]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def send_study(router: InProcessRouter, folder: Path, count: int = 3,
               modality: str = "CT") -> set[str]:
    files = write_series(folder, count, modality=modality)
    storescu(files, router.port, "DYNAMIC_DICOM_MW")
    return uids(files)


def wait_applied(router: InProcessRouter, predicate: object, what: str,
                 started: float | None = None) -> float:
    """Poll until the running router applied a change; return the seconds since ``started``."""
    started = time.monotonic() if started is None else started
    wait_until(lambda: predicate(router.app.settings), 10.0, what)  # type: ignore[operator]
    return time.monotonic() - started


def holder(uid_set: set[str], *orthancs: RunningOrthanc) -> set[str]:
    return {o.name for o in orthancs if o.sop_instance_uids() & uid_set}


def add_storage(router: InProcessRouter, orthanc: RunningOrthanc) -> None:
    registry.add_endpoint(router.app.store, EndpointSettings(
        name=orthanc.name, aet=orthanc.aet, port=orthanc.dicom_port, url=orthanc.url,
        groups=["storage"]))
    wait_applied(router, lambda s: s.endpoint(orthanc.name) is not None,
                 f"{orthanc.name} live")


@pytest.fixture
def live(orthanc_factory: OrthancFactory, tmp_path: Path) -> tuple[
        RunningOrthanc, RunningOrthanc, RunningOrthanc, InProcessRouter]:
    storage1 = orthanc_factory("ORTHANC1")
    storage2 = orthanc_factory("ORTHANC2")
    probe = orthanc_factory("ORTHANC-PROBE")
    router = start_router(tmp_path / "home", router_settings([storage1], probe, **LIVE))
    yield storage1, storage2, probe, router
    router.stop()


def test_endpoint_added_at_runtime_receives_the_next_new_study(live, tmp_path: Path) -> None:
    storage1, storage2, probe, router = live
    first = send_study(router, tmp_path / "a")
    router.wait_idle()
    assert holder(first, storage1, storage2) == {"ORTHANC1"}

    issued = time.monotonic()
    result = dde(router.home.root, "endpoints", "add", "ORTHANC2", "--aet", storage2.aet,
                 "--host", "127.0.0.1", "--port", str(storage2.dicom_port),
                 "--url", storage2.url, "--group", "storage")
    assert result.returncode == 0, result.stderr
    took = wait_applied(router, lambda s: s.endpoint("ORTHANC2") is not None, "ORTHANC2 live",
                        issued)
    print(f"`dde endpoints add` to applied: {took:.2f} s (CLI start-up included)")

    second = send_study(router, tmp_path / "b")
    router.wait_idle()
    assert holder(second, storage1, storage2) == {"ORTHANC2"}
    assert probe.sop_instance_uids() >= first | second
    listed = dde(router.home.root, "endpoints", "list", "--json")
    assert '"ORTHANC2"' in listed.stdout


def test_drained_endpoint_gets_no_new_study_but_keeps_its_pinned_one(live,
                                                                      tmp_path: Path) -> None:
    storage1, storage2, probe, router = live
    add_storage(router, storage2)
    pinned_files = write_series(tmp_path / "pinned", 4)
    storescu(pinned_files[:2], router.port, "DYNAMIC_DICOM_MW")
    router.wait_idle()
    pinned_to = holder(uids(pinned_files[:2]), storage1, storage2)
    assert len(pinned_to) == 1
    drained = pinned_to.pop()

    issued = time.monotonic()
    result = dde(router.home.root, "endpoints", "drain", drained)
    assert result.returncode == 0, result.stderr
    took = wait_applied(router, lambda s: s.endpoint(drained).state is EndpointState.DRAINING,
                        "drain applied", issued)
    print(f"`dde endpoints drain` to applied: {took:.2f} s")

    new_studies = set()
    for index in range(3):
        new_studies |= send_study(router, tmp_path / f"new{index}", 2)
    storescu(pinned_files[2:], router.port, "DYNAMIC_DICOM_MW")
    router.wait_idle()
    drained_orthanc = storage1 if drained == "ORTHANC1" else storage2
    other = storage2 if drained == "ORTHANC1" else storage1
    assert not drained_orthanc.sop_instance_uids() & new_studies
    assert other.sop_instance_uids() >= new_studies
    assert drained_orthanc.sop_instance_uids() >= uids(pinned_files), "pinned study split"


def test_killed_endpoint_gets_no_new_study_and_its_pinned_study_moves(live,
                                                                     tmp_path: Path) -> None:
    storage1, storage2, probe, router = live
    add_storage(router, storage2)
    # ORTHANC1 holds a study already, so the next new study is pinned to ORTHANC2
    send_study(router, tmp_path / "warm", 3)
    router.wait_idle()
    study_files = write_series(tmp_path / "moving", 6)
    storescu(study_files[:2], router.port, "DYNAMIC_DICOM_MW")
    router.wait_idle()
    assert holder(uids(study_files[:2]), storage1, storage2) == {"ORTHANC2"}

    storage2.kill()
    killed_at = time.monotonic()
    wait_until(lambda: router.app.health.is_down("ORTHANC2"), 10, "ORTHANC2 seen down")
    detected = time.monotonic() - killed_at
    storescu(study_files[2:], router.port, "DYNAMIC_DICOM_MW")  # the rest of the pinned study
    fresh = send_study(router, tmp_path / "fresh", 2)
    wait_until(lambda: storage1.sop_instance_uids() >= fresh, 20, "new study on ORTHANC1")

    wait_until(lambda: storage1.sop_instance_uids() >= uids(study_files[2:]), 30,
               "the pinned study's pending rest moved to ORTHANC1")
    moved = time.monotonic() - killed_at
    print(f"down detected after {detected:.2f} s; study moved after {moved:.2f} s "
          f"(failover_after 2 s)")
    events = router.ledger.event_log.events(limit=1_000_000)
    assert ("study-moved", "ORTHANC2", "ORTHANC1") in [tuple(e[2:5]) for e in events]
    assert probe.sop_instance_uids() >= uids(study_files) | fresh


def test_rules_applied_live_route_mr_to_orthanc2_and_bad_rules_change_nothing(
        live, tmp_path: Path) -> None:
    storage1, storage2, probe, router = live
    add_storage(router, storage2)
    good = tmp_path / "rules.yaml"
    good.write_text(
        "rules:\n"
        "  - name: mr-to-orthanc2\n"
        "    when: {Modality: MR}\n"
        "    route: [ORTHANC2]\n"
        "  - name: default\n"
        "    route: [ORTHANC1]\n"
        "mirror: [ORTHANC-PROBE]\n")
    started = time.monotonic()
    result = dde(router.home.root, "rules", "apply", str(good))
    assert result.returncode == 0, result.stderr
    wait_until(lambda: [r.name for r in router.app.router.ruleset.rules]
               == ["mr-to-orthanc2", "default"], 10, "rules applied")
    print(f"`dde rules apply` to applied: {time.monotonic() - started:.2f} s")

    mr = send_study(router, tmp_path / "mr", 2, modality="MR")
    ct = send_study(router, tmp_path / "ct", 2, modality="CT")
    router.wait_idle()
    assert holder(mr, storage1, storage2) == {"ORTHANC2"}
    assert holder(ct, storage1, storage2) == {"ORTHANC1"}
    where = dde(router.home.root, "where", next(iter(mr)), "--json")
    assert '"rule": "mr-to-orthanc2"' in where.stdout

    before = router.home.rules_file.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: broken\n    when: {Modality: {regex: '('}}\n"
                   "    route: [ORTHANC1]\n")
    result = dde(router.home.root, "rules", "apply", str(bad))
    assert result.returncode != 0
    assert "line 3" in result.stderr and "Traceback" not in result.stderr
    assert router.home.rules_file.read_text() == before
    mr2 = send_study(router, tmp_path / "mr2", 1, modality="MR")
    router.wait_idle()
    assert holder(mr2, storage1, storage2) == {"ORTHANC2"}


def test_reconcile_finds_and_repairs_an_instance_deleted_from_the_probe(
        live, tmp_path: Path) -> None:
    storage1, storage2, probe, router = live
    sent = send_study(router, tmp_path / "a", 4)
    router.wait_idle()
    victim = sorted(sent)[0]
    probe.delete_instance(victim)
    assert victim not in probe.sop_instance_uids()

    report = dde(router.home.root, "reconcile", "--json")
    assert report.returncode == 5, report.stderr  # differences found
    assert '"ORTHANC-PROBE": 1' in report.stdout

    repaired = dde(router.home.root, "reconcile", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "queued 1 copies" in repaired.stdout
    wait_until(lambda: victim in probe.sop_instance_uids(), 20, "copy delivered to the probe")
    again = dde(router.home.root, "reconcile", "--json")
    assert again.returncode == 0 and '"consistent": true' in again.stdout


def test_an_added_unreachable_endpoint_gets_no_new_study(live, tmp_path: Path) -> None:
    """Issue item 5: `endpoints add` of a PACS that takes connections and never answers,
    and a new study a second later. It used to be picked (health unknown, load 0) and the
    study waited for failover; now it goes to the member known up, at once."""
    storage1, _, probe, router = live
    first = send_study(router, tmp_path / "a")
    router.wait_idle()
    assert holder(first, storage1) == {"ORTHANC1"}  # ORTHANC1 is the more loaded member

    with BlackHole() as hole:
        registry.add_endpoint(router.app.store, EndpointSettings(
            name="UNREACHABLE", aet="UNREACHABLE", host="127.0.0.1", port=hole.port,
            groups=["storage"]))
        wait_applied(router, lambda s: s.endpoint("UNREACHABLE") is not None,
                     "UNREACHABLE live")
        time.sleep(1.0)  # the scenario: the study comes a second after the add
        sent = time.monotonic()
        second = send_study(router, tmp_path / "b")
        storage1.wait_for_sop_instance_uids(second, timeout=30)
        took = time.monotonic() - sent
        print(f"new study after adding an unreachable endpoint: stored in {took:.2f} s")

        events = router.ledger.event_log.events(limit=1_000_000)
        moved = [e for e in events if tuple(e[2:4]) == ("study-moved", "UNREACHABLE")]
        assert moved == [], "the study went to the unreachable endpoint, then failed over"
        assert deliveries(router.ledger, "UNREACHABLE") == []
        assert router.app.health.health("UNREACHABLE") in ("unknown", "down")
        assert took < 10.0
    router.wait_idle()
    assert probe.sop_instance_uids() >= first | second
