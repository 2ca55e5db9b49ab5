"""Edited variants in the ledger (both backends): recorded with the instance, sent by the
deliveries that name them, shown by ``where``, released with the original."""

from __future__ import annotations

import json
import time

import pytest
from tests.support.unitkit import new_instance

from dde.dicom.edits import RemoveElement
from dde.routing.route import Route
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome, NewVariant
from dde.store.states import DeliveryState

EDITS = json.dumps([{"tag": "(0010,1000)", "keyword": "OtherPatientIDs", "action": "remove",
                     "old": "SECRET", "new": None}])
ROUTE = Route("tag-site+default", ("ORTHANC1", "ORTHANC2"), ("PROBE",),
              variants=(("ORTHANC1", "tag-site"), ("PROBE", "tag-site")),
              edits=(("tag-site", (RemoveElement(0x00101000, "OtherPatientIDs"),)),))
VARIANT = NewVariant("tag-site", "ab/variant.dcm", 90, EDITS)


def sent_paths(ledger: Ledger) -> dict[str, str | None]:
    now = time.time()
    return {name: item.spool_path for name in ("ORTHANC1", "ORTHANC2", "PROBE")
            for item in ledger.queue.claim(name, "test", now, 10, 30.0)}


def test_each_delivery_sends_its_rules_bytes(ledger: Ledger) -> None:
    instance_id, _ = ledger.intake.ingest(new_instance("ab/original.dcm"), lambda _: ROUTE,
                                          [VARIANT])

    assert sent_paths(ledger) == {"ORTHANC1": "ab/variant.dcm", "ORTHANC2": "ab/original.dcm",
                                  "PROBE": "ab/variant.dcm"}
    (record,) = ledger.operators.where(ledger.diagnostics.instances()[0].sop_instance_uid)
    shown = {d.endpoint: (d.variant_rule, d.edits_json) for d in record.deliveries}
    assert shown == {"ORTHANC1": ("tag-site", EDITS), "ORTHANC2": (None, None),
                     "PROBE": ("tag-site", EDITS)}
    assert ledger.spool_index.spool_paths_in_use() == {"ab/original.dcm", "ab/variant.dcm"}
    assert record.id == instance_id


def test_the_variant_goes_with_the_original_when_all_is_delivered(ledger: Ledger) -> None:
    instance_id, _ = ledger.intake.ingest(new_instance("ab/original.dcm"), lambda _: ROUTE,
                                          [VARIANT])
    deliveries = ledger.diagnostics.deliveries()
    ledger.queue.record_outcomes([DeliveryOutcome(d.id, DeliveryState.DELIVERED)
                                  for d in deliveries])

    releasable = ledger.spool_index.releasable_spool_files(time.time() + 1)

    assert releasable == [(instance_id, "ab/original.dcm")]
    assert ledger.spool_index.variant_spool_files([instance_id]) == ["ab/variant.dcm"]
    ledger.spool_index.mark_spool_removed([instance_id])
    assert ledger.spool_index.variant_spool_files([instance_id]) == []
    assert ledger.spool_index.spool_paths_in_use() == set()
    (record,) = ledger.operators.where(ledger.diagnostics.instances()[0].sop_instance_uid)
    assert {d.endpoint for d in record.deliveries if d.edits_json} == {"ORTHANC1", "PROBE"}


def test_a_variant_not_made_is_never_sent_as_received(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="variant of rule tag-site was not made"):
        ledger.intake.ingest(new_instance("ab/original.dcm"), lambda _: ROUTE, [])
    assert ledger.diagnostics.count("instances") == 0
    assert ledger.diagnostics.count("deliveries") == 0


def test_a_route_without_variants_writes_none(ledger: Ledger) -> None:
    ledger.intake.ingest(new_instance("ab/original.dcm"),
                         lambda _: Route("default", ("ORTHANC1",)), [VARIANT])
    assert ledger.diagnostics.count("instance_variants") == 0
    assert sent_paths(ledger) == {"ORTHANC1": "ab/original.dcm"}
