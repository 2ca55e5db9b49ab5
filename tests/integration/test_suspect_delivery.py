"""One instance a PACS never answers (issue item 1): the instances queued behind it for the
same PACS are delivered at once, over another association; the silent one is retried
alone, on its own association and schedule, and ends failed with its reason. With
``associations: 2`` two C-STOREs to one destination are in flight at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from tests.support.datagen import write_series
from tests.support.faults import SelectiveHangingSCP, deliveries, sop_instance_uid
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import storescu, wait_until
from tests.support.router import ROUTER_AET, endpoint_for, router_settings, start_router
from tests.support.senders import raw_c_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORPUS = Path("/work/shared/corpus/public")
ODD_FRAGMENT = CORPUS / "deid-data__ctbrain1.dcm"
"""Encapsulated pixel data with an odd-length fragment: Orthanc logs "Odd Fragment Length"
and never answers its C-STORE."""


def _settings(scp: SelectiveHangingSCP, associations: int, **delivery: float) -> object:
    return router_settings(
        [], None, web={"enabled": False},
        endpoints=[scp.endpoint(groups=["storage"], associations=associations)],
        routing={"mirror": []},
        delivery={"max_attempts": 3, "backoff_base_seconds": 0.2, **delivery},
    )


def test_ten_instances_queued_behind_a_silent_one_are_delivered_at_once(
        tmp_path: Path) -> None:
    """The DIMSE timeout of the issue (30 s): the ten are delivered within seconds, while
    the C-STORE of the silent one is still in flight (two at once on one destination)."""
    files = write_series(tmp_path / "files", 11)
    silent = sop_instance_uid(files[0])
    others = {sop_instance_uid(f) for f in files[1:]}
    scp = SelectiveHangingSCP({silent})
    router = start_router(tmp_path / "router-home", _settings(
        scp, 2, dimse_timeout=30.0, response_timeout_seconds=30.0))  # type: ignore[arg-type]
    try:
        storescu(files[:1], router.port, ROUTER_AET)
        wait_until(lambda: scp.requests.get(silent, 0) >= 1, 10,
                   "the silent instance's C-STORE reached the destination")
        sent = time.time()
        storescu(files[1:], router.port, ROUTER_AET)  # queued behind the silent one

        wait_until(lambda: others <= set(scp.answered), 5.0,
                   "the ten others delivered while the silent C-STORE waits")
        took = max(scp.answered[uid] for uid in others) - sent
        print(f"\nten instances queued behind a silent one delivered {took:.2f} s after "
              f"they were sent; C-STOREs in flight at once: {scp.max_in_flight}")
        assert took < 5.0
        assert scp.max_in_flight >= 2
        assert scp.requests[silent] == 1 and silent not in scp.answered
        rows = {r["sop_instance_uid"]: r for r in deliveries(router.ledger, scp.ae_title)}
        assert all(rows[uid]["state"] == "delivered" for uid in others)
        assert rows[silent]["state"] == "pending"
    finally:
        router.stop()
        scp.close()


def test_a_silent_instance_is_retried_alone_and_fails_with_its_reason(tmp_path: Path) -> None:
    files = write_series(tmp_path / "files", 11)
    silent = sop_instance_uid(files[0])
    others = {sop_instance_uid(f) for f in files[1:]}
    scp = SelectiveHangingSCP({silent})
    router = start_router(tmp_path / "router-home", _settings(
        scp, 1, dimse_timeout=30.0, response_timeout_seconds=2.0))  # type: ignore[arg-type]
    try:
        begin = time.time()
        storescu(files, router.port, ROUTER_AET)
        wait_until(lambda: others <= set(scp.answered), 8.0,
                   "the others delivered after at most one response timeout")
        took = max(scp.answered.values()) - begin
        associations_then = scp.associations

        def failed() -> list[dict[str, object]]:
            return [r for r in deliveries(router.ledger, scp.ae_title, "failed")]

        (row,) = wait_until(failed, 30, "the silent instance failed")
        print(f"\none association: the ten others done {took:.2f} s after the start; the "
              f"silent one failed after {row['attempts']} attempts: {row['last_error']}")
        assert row["sop_instance_uid"] == silent and row["attempts"] == 3
        assert "no C-STORE response within 2 s" in str(row["last_error"])
        assert scp.requests[silent] == 3
        assert all(scp.requests[uid] == 1 for uid in others)
        # Each retry had an association of its own (opened for it, not shared with others).
        assert scp.associations >= associations_then + 2
        assert {r["sop_instance_uid"] for r in deliveries(router.ledger, scp.ae_title,
                                                           "delivered")} == others
    finally:
        router.stop()
        scp.close()


@pytest.mark.skipif(not ODD_FRAGMENT.exists(),
                    reason=f"the public corpus is not here ({ODD_FRAGMENT})")
def test_an_odd_fragment_instance_does_not_stall_a_real_orthanc(
        orthanc_factory: OrthancFactory, tmp_path: Path) -> None:
    """The instance of the issue, sent unchanged with pynetdicom through the router to a
    real Orthanc, then ten normal files with storescu: those are delivered promptly. The odd
    one may be refused at receive (the receiver may refuse odd-length fragments); accepted,
    Orthanc never answers it and it becomes suspect (or, should Orthanc take it, delivered)."""
    storage = orthanc_factory("ORTHANC1")
    settings = router_settings(
        [storage], None, web={"enabled": False},
        endpoints=[endpoint_for(storage, ["storage"])], routing={"mirror": []},
        delivery={"dimse_timeout": 30.0, "response_timeout_seconds": 5.0})
    router = start_router(tmp_path / "router-home", settings)
    try:
        meta = dcmread(ODD_FRAGMENT, stop_before_pixels=True)
        odd_uid = str(meta.SOPInstanceUID)
        received = raw_c_store(ODD_FRAGMENT, router.port, ROUTER_AET, str(meta.SOPClassUID),
                               odd_uid, str(meta.file_meta.TransferSyntaxUID))
        if received.status == 0:
            wait_until(lambda: storage.count() == 0 and any(
                r["sop_instance_uid"] == odd_uid for r in deliveries(router.ledger)), 5,
                "the odd instance queued")
            time.sleep(1.0)  # its C-STORE is in flight to Orthanc now
        normal = write_series(tmp_path / "files", 10)
        uids = {sop_instance_uid(f) for f in normal}
        sent = time.time()
        storescu(normal, router.port, ROUTER_AET)
        storage.wait_for_sop_instance_uids(uids, timeout=8)
        took = time.time() - sent

        def odd_settled() -> list[dict[str, object]]:
            return [r for r in deliveries(router.ledger, storage.name)
                    if r["sop_instance_uid"] == odd_uid
                    and (r["state"] == "delivered" or r["last_error"])]

        if received.status == 0:
            (odd,) = wait_until(odd_settled, 15, "the odd instance delivered or suspect")
            outcome = f"queued; then {odd['state']}: {odd['last_error']}"
            assert odd["state"] == "delivered" or "no C-STORE response" in str(
                odd["last_error"])
        else:
            outcome = f"refused at receive ({received.detail})"
        print(f"\nodd-fragment instance: {outcome}; ten normal instances in Orthanc "
              f"{took:.2f} s after they were sent")
        assert took < 8.0
    finally:
        router.stop()
