"""How many times each instance reaches each destination: at least once, and every extra
copy accounted for by the ledger.

Orthanc keeps one copy per SOP Instance UID, so it cannot show a duplicate delivery. Here
both destinations are DCMTK ``storescp`` processes writing one file per C-STORE
(:mod:`tests.support.recording_scp`): the storage and the probe. The router's promise is
delivery *at least once*: a resend (after a refusal, a timeout, or a crash between the
destination's answer and the ledger write) may deliver an instance twice. So per destination:
the ledger shows exactly one delivered delivery per instance, the destination received every
instance at least once, and its duplicates equal the resends the ledger counts (attempts
beyond the first) — 0 in this clean run.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from tests.support.datagen import write_studies
from tests.support.faults import sop_instance_uids
from tests.support.orthanc import free_port, storescu
from tests.support.recording_scp import RecordingSCP
from tests.support.router import ROUTER_AET, router_settings, start_router

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTANCES = 40


def test_the_recording_destination_counts_every_reception(tmp_path: Path) -> None:
    """The recorder itself: the same instances sent twice are counted twice."""
    files = [f for paths in write_studies(tmp_path / "files", 1, 3).values() for f in paths]
    with RecordingSCP(tmp_path / "recorder", "RECORDER") as recorder:
        storescu(files + files, recorder.port, recorder.ae_title)
        receptions = recorder.receptions()
    assert receptions == Counter({uid: 2 for uid in sop_instance_uids(files)})
    assert recorder.duplicates() == len(files)


def test_each_instance_is_delivered_at_least_once_and_duplicates_match_the_ledger(
        tmp_path: Path) -> None:
    with RecordingSCP(tmp_path / "storage", "REC_STORAGE") as storage, \
            RecordingSCP(tmp_path / "probe", "REC_PROBE") as probe:
        settings = router_settings(
            [], None, port=free_port(), web={"enabled": False},
            endpoints=[storage.endpoint(["storage"]), probe.endpoint(["probe"])],
            routing={"mirror": [probe.ae_title]})
        router = start_router(tmp_path / "router-home", settings)
        try:
            files = [f for paths in write_studies(tmp_path / "files", 4,
                                                  INSTANCES // 4).values() for f in paths]
            uids = set(sop_instance_uids(files))
            storescu(files, router.port, ROUTER_AET)  # every one acknowledged (check=True)
            router.wait_idle(60)

            attempts: Counter[str] = Counter()
            delivered: Counter[str] = Counter()
            errors: list[str] = []
            for uid in uids:
                records = router.ledger.operators.where(uid)
                assert len(records) == 1, f"{uid} is {len(records)} times in the ledger"
                deliveries = records[0].deliveries
                per_endpoint = Counter(d.endpoint for d in deliveries)
                assert per_endpoint == {storage.ae_title: 1, probe.ae_title: 1}, per_endpoint
                for delivery in deliveries:
                    assert delivery.state == "delivered", (uid, delivery)
                    delivered[delivery.endpoint] += 1
                    attempts[delivery.endpoint] += delivery.attempts
                    if delivery.last_error:
                        errors.append(f"{delivery.endpoint}: {delivery.last_error}")
        finally:
            router.stop()

        for recorder in (storage, probe):
            name = recorder.ae_title
            receptions = recorder.receptions()
            missing = uids - set(receptions)
            unexpected = set(receptions) - uids
            duplicates = sum(count - 1 for count in receptions.values())
            resends = attempts[name] - delivered[name]
            print(f"\n{name}: {len(uids)} instances, {delivered[name]} delivered deliveries in "
                  f"the ledger, {sum(receptions.values())} C-STOREs received, "
                  f"{len(missing)} missing, {duplicates} duplicates, {resends} resends in "
                  f"the ledger")
            assert delivered[name] == len(uids)
            assert not missing, f"{name} never received {len(missing)} delivered instances"
            assert not unexpected, f"{name} received instances nobody sent: {unexpected}"
            assert duplicates == resends, (
                f"{name} received {duplicates} duplicate(s) but the ledger counts {resends} "
                f"resend(s)")
        assert not errors, f"not a clean run: {errors[:5]}"
        assert sum(attempts.values()) == sum(delivered.values()), "resends in a clean run"
