"""Faulty destinations: a storage PACS that goes down and comes back, a destination that
hangs after accepting the connection. The router keeps receiving, the other destinations
keep flowing, nothing acknowledged is dropped, and what waits says why in the ledger."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.support.datagen import write_series, write_studies
from tests.support.faults import (
    BlackHole,
    HangingStorageSCP,
    deliveries,
    sop_instance_uids,
    state_counts,
)
from tests.support.fixtures import OrthancFactory, ReferenceStack
from tests.support.orthanc import RunningOrthanc, storescu, wait_until
from tests.support.router import ROUTER_AET, endpoint_for, router_settings, start_router

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _pins(stack: ReferenceStack) -> dict[str, str]:
    pins = stack.router.ledger.diagnostics.pins()
    return {pin.study_instance_uid: pin.endpoint for pin in pins}


def _assert_each_in_exactly_one_storage(uids: set[str], storages: list[RunningOrthanc],
                                        probe: RunningOrthanc) -> None:
    held = {s.name: s.sop_instance_uids() for s in storages}
    for uid in uids:
        holders = [name for name, stored in held.items() if uid in stored]
        assert len(holders) == 1, f"{uid} is in {holders or 'no storage'}"
    assert uids <= probe.sop_instance_uids()


def test_storage_down_mid_run_does_not_hold_back_the_others_and_drains_on_restart(
    reference_stack: ReferenceStack, tmp_path: Path
) -> None:
    stack = reference_stack
    ledger = stack.router.ledger
    # Phase 1, everything up: four studies spread over both storages and get pinned.
    first = write_studies(tmp_path / "phase1", 4, 4)
    storescu([f for paths in first.values() for f in paths], stack.router.port, ROUTER_AET)
    stack.router.wait_idle(30)
    pins = _pins(stack)
    assert set(pins) == set(first)
    victim = next(s for s in stack.storages if s.name in pins.values())
    survivor = next(s for s in stack.storages if s is not victim)

    victim.stop()
    # Phase 2, victim down: more instances of every study (affinity keeps the victim's
    # studies on it) and two new studies.
    second: list[Path] = []
    for index, study in enumerate(first):
        second += write_series(tmp_path / "phase2", 3, study_uid=study, prefix=f"more{index}_")
    for paths in write_studies(tmp_path / "phase2-new", 2, 3).values():
        second += paths
    started = time.monotonic()
    storescu(second, stack.router.port, ROUTER_AET)
    receive_seconds = time.monotonic() - started
    all_uids = set(sop_instance_uids([f for paths in first.values() for f in paths]))
    second_uids = set(sop_instance_uids(second))
    all_uids |= second_uids
    assert receive_seconds < 10, "receiving waited for the dead storage"

    # The probe gets everything while the victim is still down.
    stack.probe.wait_for_sop_instance_uids(all_uids, timeout=20)
    assert not victim.process.running

    for_victim = {d["sop_instance_uid"] for d in deliveries(ledger, victim.name)
                  if d["sop_instance_uid"] in second_uids}
    for_survivor = {d["sop_instance_uid"] for d in deliveries(ledger, survivor.name)
                    if d["sop_instance_uid"] in second_uids}
    victim_studies = {study for study, name in pins.items() if name == victim.name}
    assert len(for_victim) >= 3 * len(victim_studies) > 0
    assert for_victim | for_survivor == second_uids
    survivor.wait_for_sop_instance_uids(for_survivor, timeout=20)

    # The victim's deliveries wait, each with the reason, none given up.
    def victim_waits_with_reason() -> bool:
        pending = deliveries(ledger, victim.name, "pending")
        return ({d["sop_instance_uid"] for d in pending} == for_victim
                and all(d["last_error"] for d in pending))

    wait_until(victim_waits_with_reason, 15, f"{victim.name}'s deliveries pending with an error")
    errors = {d["last_error"] for d in deliveries(ledger, victim.name, "pending")}
    print(f"\n{len(for_victim)} deliveries wait for {victim.name}: {errors}")
    assert not deliveries(ledger, state="failed")
    assert not deliveries(ledger, survivor.name, "pending")
    assert not deliveries(ledger, stack.probe.name, "pending")

    victim.start_again()
    stack.router.wait_idle(30)
    assert state_counts(ledger) == {"delivered": 2 * len(all_uids)}
    _assert_each_in_exactly_one_storage(all_uids, stack.storages, stack.probe)
    assert for_victim <= victim.sop_instance_uids()
    # study affinity held through the outage: no study is split
    held_by_victim = victim.sop_instance_uids()
    for study in first:
        assert (pins[study] == victim.name) == bool(
            set(sop_instance_uids(first[study])) & held_by_victim)


def test_destination_that_never_answers_does_not_block_the_others(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    with BlackHole() as hole:
        settings = router_settings(
            [storage], probe,
            endpoints=[
                endpoint_for(storage, ["storage"]),
                endpoint_for(probe, ["probe"]),
                {"name": "SILENT", "aet": "SILENT", "host": "127.0.0.1", "port": hole.port,
                 "groups": ["archive"]},
            ],
            routing={"mirror": [probe.name, "SILENT"]},
            delivery={"connect_timeout": 1.0, "dimse_timeout": 2.0},
        )
        router = start_router(tmp_path / "router-home", settings)
        try:
            files = write_series(tmp_path / "files", 12)
            uids = set(sop_instance_uids(files))
            started = time.monotonic()
            storescu(files, router.port, ROUTER_AET)
            storage.wait_for_sop_instance_uids(uids, timeout=15)
            probe.wait_for_sop_instance_uids(uids, timeout=15)
            flowing = time.monotonic() - started
            assert hole.connections >= 1, "the router never tried the silent destination"
            assert hole.bytes_received > 0, "no A-ASSOCIATE-RQ reached the silent destination"

            def silent_waits_with_reason() -> bool:
                rows = deliveries(router.ledger, "SILENT")
                return (len(rows) == len(uids)
                        and all(r["state"] == "pending" and r["last_error"] for r in rows))

            wait_until(silent_waits_with_reason, 15, "SILENT's deliveries pending with an error")
            errors = {r["last_error"] for r in deliveries(router.ledger, "SILENT")}
            print(f"\nothers done in {flowing:.1f} s; SILENT waits: {errors}")
            assert not deliveries(router.ledger, state="failed")
            assert not deliveries(router.ledger, storage.name, "pending")
            assert not deliveries(router.ledger, probe.name, "pending")
        finally:
            router.stop()


def test_destination_that_hangs_inside_c_store_does_not_block_the_others_and_recovers(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    stuck = HangingStorageSCP()
    settings = router_settings(
        [storage], probe,
        endpoints=[endpoint_for(storage, ["storage"]), endpoint_for(probe, ["probe"]),
                   stuck.endpoint()],
        routing={"mirror": [probe.name, stuck.ae_title]},
        delivery={"connect_timeout": 1.0, "dimse_timeout": 1.5},
    )
    router = start_router(tmp_path / "router-home", settings)
    try:
        files = write_series(tmp_path / "files", 4)
        uids = set(sop_instance_uids(files))
        storescu(files, router.port, ROUTER_AET)
        storage.wait_for_sop_instance_uids(uids, timeout=10)
        probe.wait_for_sop_instance_uids(uids, timeout=10)
        wait_until(lambda: stuck.requests >= 1, 5, "a C-STORE reached the hung destination")

        def timed_out_once() -> list[dict[str, object]]:
            return [r for r in deliveries(router.ledger, stuck.ae_title)
                    if r["last_error"] and int(str(r["attempts"])) >= 1]

        timed_out = wait_until(timed_out_once, 10, "a C-STORE to the hung destination timed out")
        print(f"\nhung destination: {timed_out[0]['last_error']}")
        assert "no C-STORE response" in str(timed_out[0]["last_error"])
        assert not deliveries(router.ledger, state="failed")
        assert not deliveries(router.ledger, stuck.ae_title, "delivered")

        stuck.answer()  # the PACS recovers: the retries go through
        router.wait_idle(30)
        assert state_counts(router.ledger) == {"delivered": 3 * len(uids)}
        assert uids <= stuck.answered
    finally:
        router.stop()
        stuck.close()


def test_every_delivery_waiting_for_a_dead_destination_shows_why(
    orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    """More deliveries wait than one dispatcher batch holds: each shows the error, not only
    the head of the queue (an operator asks `dde where` about any of them)."""
    storage = orthanc_factory("ORTHANC1")
    probe = orthanc_factory("ORTHANC-PROBE")
    router = start_router(tmp_path / "router-home",
                          router_settings([storage], probe, delivery={"batch_size": 4}))
    try:
        storage.stop()
        files = write_series(tmp_path / "files", 12)
        uids = set(sop_instance_uids(files))
        storescu(files, router.port, ROUTER_AET)
        probe.wait_for_sop_instance_uids(uids, timeout=15)
        wait_until(lambda: len(deliveries(router.ledger, storage.name, "pending")) == len(uids)
                   and any(d["last_error"] for d in deliveries(router.ledger, storage.name)),
                   10, f"deliveries to {storage.name} pending, the first with an error")

        def all_show_the_error() -> bool:
            return all(d["last_error"] for d in deliveries(router.ledger, storage.name))

        try:
            wait_until(all_show_the_error, 5, "every waiting delivery showing the error")
        except AssertionError:
            without = [d["id"] for d in deliveries(router.ledger, storage.name)
                       if not d["last_error"]]
            raise AssertionError(
                f"{len(without)} of {len(uids)} deliveries waiting for the dead "
                f"{storage.name} show no last_error (ids {without})") from None
        storage.start_again()
        router.wait_idle(30)
        assert uids <= storage.sop_instance_uids()
    finally:
        router.stop()
