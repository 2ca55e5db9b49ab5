"""The receive path makes each rule's edited variant before the commit: a spool file per
rule with edits, recorded with the deliveries that send it; refused whole when an edit
cannot be made."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from pydicom import dcmread
from tests.support.unitkit import FakeSender, endpoint, generated, load_book, part10_bytes
from tests.unit.test_dispatcher import deliver_everywhere, make_dispatcher
from tests.unit.test_streamed_ingest import incoming_for

from dde.config import RoutingSettings
from dde.dicom import status as dimse
from dde.receiving.ingest import IngestPipeline
from dde.routing.router import Router
from dde.routing.rules import parse_rules
from dde.store.ledger import Ledger
from dde.store.spool import Spool
from dde.synthetic import make_instance

ENDPOINTS = [endpoint("ORTHANC1", ["a"]), endpoint("ORTHANC2", ["b"]),
             endpoint("ORTHANC-PROBE", ["probe"])]
RULES = """\
rules:
  - name: coerced
    set: {InstitutionName: "North Campus", "(0008,1010)": "CT2"}
    remove: [PatientID]
    route: [ORTHANC1]
    continue: true
  - name: as-received
    route: [ORTHANC2]
mirror: [ORTHANC-PROBE]
"""


def pipeline(ledger: Ledger, spool: Spool, rules: str = RULES) -> IngestPipeline:
    router = Router(RoutingSettings(), ENDPOINTS, load_book(), None, parse_rules(rules))
    return IngestPipeline(ledger, spool, router, lambda names: None)


def spooled(spool: Spool) -> list[Path]:
    return sorted(p for p in spool.root.rglob("*.dcm") if p.parent != spool.incoming_dir)


def test_the_variant_is_spooled_and_recorded_before_the_ack(ledger: Ledger,
                                                            spool: Spool) -> None:
    instance = generated()

    result = pipeline(ledger, spool).ingest(instance.incoming())

    assert result.ok
    assert len(spooled(spool)) == 2  # the original and one variant
    paths = {item.endpoint: item.spool_path for name in ("ORTHANC1", "ORTHANC2",
                                                          "ORTHANC-PROBE")
             for item in ledger.queue.due(name, 2e9, 10)}
    assert paths["ORTHANC1"] == paths["ORTHANC-PROBE"] != paths["ORTHANC2"]
    edited = dcmread(spool.path_of(str(paths["ORTHANC1"])))
    original = dcmread(spool.path_of(str(paths["ORTHANC2"])))
    assert edited.InstitutionName == "North Campus" and edited.StationName == "CT2"
    assert "PatientID" not in edited and "PatientID" in original
    assert edited.PixelData == original.PixelData
    assert edited.SOPInstanceUID == original.SOPInstanceUID
    (record,) = ledger.operators.where(instance.sop_instance_uid)
    edits = json.loads(next(d.edits_json for d in record.deliveries
                            if d.endpoint == "ORTHANC1") or "[]")
    assert [(e["keyword"], e["action"], e["new"]) for e in edits] == [
        ("InstitutionName", "set", "North Campus"), ("StationName", "set", "CT2"),
        ("PatientID", "remove", None)]


def test_a_streamed_instance_is_edited_from_its_spool_file(ledger: Ledger, spool: Spool,
                                                           tmp_path: Path) -> None:
    raw = part10_bytes(make_instance(study_uid="1.2.3", series_uid="1.2.3.4", number=1,
                                     rows=8, columns=8))
    received = spool.incoming_dir / "streamed.dcm"
    received.parent.mkdir(parents=True, exist_ok=True)
    received.write_bytes(raw)

    result = pipeline(ledger, spool).ingest(incoming_for(received, raw))

    assert result.ok
    files = spooled(spool)
    assert len(files) == 2
    names = {str(dcmread(f).get("InstitutionName", "")) for f in files}
    assert "North Campus" in names


def test_an_edit_that_cannot_be_made_refuses_the_instance(ledger: Ledger,
                                                          spool: Spool) -> None:
    rules = RULES.replace('"North Campus"', '"Nord Straße"')  # the dataset is ASCII only

    result = pipeline(ledger, spool, rules).ingest(generated().incoming())

    assert result.status == dimse.CANNOT_UNDERSTAND and result.reason == "edit_failed"
    assert "Specific Character Set" in result.detail
    assert spooled(spool) == []
    assert ledger.diagnostics.count("instances") == 0


def test_rules_without_edits_make_no_variant(ledger: Ledger, spool: Spool) -> None:
    rules = "rules:\n  - name: plain\n    route: [ORTHANC1]\nmirror: [ORTHANC-PROBE]\n"

    assert pipeline(ledger, spool, rules).ingest(generated().incoming()).ok

    assert len(spooled(spool)) == 1
    assert ledger.diagnostics.count("instance_variants") == 0


def test_workers_send_each_rules_bytes_and_the_janitor_removes_them_all(
        ledger: Ledger, spool: Spool, workers: list[Any]) -> None:
    instance = generated()
    result = pipeline(ledger, spool).ingest(instance.incoming())
    assert result.ok and result.instance_id is not None
    senders = {name: FakeSender() for name in ("ORTHANC1", "ORTHANC2", "ORTHANC-PROBE")}
    dispatcher = make_dispatcher(workers, ledger, spool, senders)

    deliver_everywhere(dispatcher, ENDPOINTS, ledger, result.instance_id, senders)

    received = {name: dcmread(io.BytesIO(sender.sent_bytes[0]))
                for name, sender in senders.items()}
    assert received["ORTHANC1"].InstitutionName == "North Campus"
    assert received["ORTHANC-PROBE"].InstitutionName == "North Campus"
    assert "InstitutionName" not in received["ORTHANC2"]
    assert senders["ORTHANC1"].sent_bytes == senders["ORTHANC-PROBE"].sent_bytes
    assert dispatcher.clean_spool_once() == 1
    assert spooled(spool) == []
