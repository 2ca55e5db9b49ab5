"""The probe (the research mirror) down does not slow storage routing.

Every instance goes to one storage and to the probe, as separate deliveries with their own
workers. With the probe stopped, the storage must receive a series in about the same time as
with the probe up, while the probe's deliveries wait with the reason; once the probe is back
they drain.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.support.datagen import write_series
from tests.support.faults import deliveries, sop_instance_uids, state_counts
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, storescu, wait_until
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIES = 30


def _time_to_storage(router: InProcessRouter, storage: RunningOrthanc,
                     files: list[Path]) -> float:
    """Seconds from the start of the send until the storage holds every instance."""
    uids = set(sop_instance_uids(files))
    started = time.monotonic()
    storescu(files, router.port, ROUTER_AET)
    storage.wait_for_sop_instance_uids(uids, timeout=60)
    return time.monotonic() - started


def test_probe_down_does_not_slow_storage_routing_and_drains_when_back(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    router = start_router(tmp_path / "router-home", router_settings([storage], probe))
    try:
        ledger = router.ledger
        # With the probe up (a first series warms both paths up, so neither measurement pays
        # for the first association).
        storescu(write_series(tmp_path / "warm", 3), router.port, ROUTER_AET)
        router.wait_idle(30)
        up_files = write_series(tmp_path / "probe-up", SERIES)
        with_probe_up = _time_to_storage(router, storage, up_files)
        router.wait_idle(30)

        probe.stop()
        down_files = write_series(tmp_path / "probe-down", SERIES)
        down_uids = set(sop_instance_uids(down_files))
        with_probe_down = _time_to_storage(router, storage, down_files)
        # (the ledger marks a delivery done just after the storage answered the C-STORE)
        wait_until(lambda: not deliveries(ledger, storage.name, "pending"), 5,
                   f"every delivery to {storage.name} settled")

        def probe_waits_with_reason() -> bool:
            pending = deliveries(ledger, probe.name, "pending")
            return ({d["sop_instance_uid"] for d in pending} == down_uids
                    and all(d["last_error"] for d in pending))

        wait_until(probe_waits_with_reason, 20, f"{probe.name}'s deliveries pending with a reason")
        reasons = {str(d["last_error"]) for d in deliveries(ledger, probe.name, "pending")}
        assert not deliveries(ledger, state="failed")

        probe.start_again()
        started = time.monotonic()
        router.wait_idle(60)
        drained = time.monotonic() - started
        probe.wait_for_sop_instance_uids(down_uids, timeout=10)
        print(f"\nprobe down: {SERIES} instances to storage in {with_probe_down:.2f} s with the "
              f"probe down vs {with_probe_up:.2f} s with it up; {len(down_uids)} probe "
              f"deliveries waited ({sorted(reasons)[:2]}); drained {drained:.1f} s after the "
              "probe came back")
        assert with_probe_down <= 3 * with_probe_up + 2, (
            f"storage routing slowed by the dead probe: {with_probe_down:.2f} s vs "
            f"{with_probe_up:.2f} s")
        assert state_counts(ledger) == {"delivered": 2 * (3 + 2 * SERIES)}
    finally:
        router.stop()
