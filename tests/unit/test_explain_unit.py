"""`dde route explain`: the decision for a file from the published live state, sending nothing."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import generate_uid
from tests.support.datagen import make_instance
from tests.support.unitkit import ISSUE_EXAMPLE_RULES

from dde.config import EndpointSettings, HealthSettings, Settings
from dde.routing.explain import ExplainError, explain
from dde.routing.route import Route
from dde.routing.router import Origin
from dde.routing.rules import RuleSet, default_ruleset, parse_rules
from dde.store.ledger import Ledger
from dde.store.records import NewInstance
from dde.store.status_board import STATUS_FRESH_SECONDS, PublishedStatus

PROBE = "ORTHANC-PROBE"
FAILOVER = 300.0

RULES = ISSUE_EXAMPLE_RULES


def settings() -> Settings:
    return Settings(
        endpoints=[EndpointSettings(name="ORTHANC1", aet="ORTHANC1", groups=["storage"]),
                   EndpointSettings(name="ORTHANC2", aet="ORTHANC2", groups=["storage"]),
                   EndpointSettings(name=PROBE, aet=PROBE, groups=["probe"])],
        health=HealthSettings(failover_after_seconds=FAILOVER))


def rules() -> RuleSet:
    return parse_rules(RULES, ["ORTHANC1", "ORTHANC2", PROBE], ["storage", "probe"])


def write_file(folder: Path, study: str | None = None, modality: str = "CT",
               patient_id: str = "P1", description: str | None = None) -> Path:
    ds = make_instance(study_uid=study or generate_uid(), series_uid=generate_uid(), number=1,
                       rows=4, columns=4, modality=modality, patient_id=patient_id)
    if description is not None:
        ds.StudyDescription = description
    path = folder / f"{generate_uid()}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def publish(ledger: Ledger, loads: dict[str, int], down: dict[str, float] | None = None) -> None:
    """Publish health 'up' (or 'down' since the given time) and the loads, as the router does."""
    down = down or {}
    ledger.status_board.publish([PublishedStatus(
        name, "down" if name in down else "up", "open" if name in down else "closed",
         down.get(name), "refused" if name in down else None, load)
        for name, load in loads.items()])


def pin(ledger: Ledger, study: str, endpoint: str) -> None:
    record = NewInstance(
        sop_instance_uid=generate_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", study_instance_uid=study,
        series_instance_uid=None, patient_id="P1", accession_number=None, modality="CT",
        calling_aet="TEST_SCU", called_aet="DYNAMIC_DICOM_MW", source_ip="127.0.0.1",
        spool_path="x/y.dcm", size=1, received_at=time.time())
    ledger.intake.ingest(record, lambda view: Route("default", (endpoint,), (PROBE,),
                                             pins=((study, endpoint, "storage"),)))


def run(path: Path, ledger: Ledger | None, ruleset: RuleSet | None = None,
        calling_aet: str = "TEST_SCU") -> dict[str, Any]:
    return explain(path, settings(), ruleset or default_ruleset(mirror=[PROBE]), ledger,
                   Origin(calling_aet, "DYNAMIC_DICOM_MW", "127.0.0.1"))


def test_a_new_study_goes_to_the_least_loaded_plus_the_probe(tmp_path: Path,
                                                              ledger: Ledger) -> None:
    publish(ledger, {"ORTHANC1": 40, "ORTHANC2": 10, PROBE: 50})

    result = run(write_file(tmp_path), ledger)

    assert result["rule"] == "default"
    assert result["destinations"] == ["ORTHANC2", PROBE]
    assert result["mirrors"] == [PROBE]
    assert result["discard"] is False
    reason = str(result["reason"])
    assert "new study" in reason and "ORTHANC1=40" in reason and "ORTHANC2=10" in reason


def test_queued_work_in_the_ledger_counts_as_load(tmp_path: Path, ledger: Ledger) -> None:
    publish(ledger, {"ORTHANC1": 0, "ORTHANC2": 0, PROBE: 0})
    pin(ledger, generate_uid(), "ORTHANC1")  # one delivery pending for ORTHANC1

    assert run(write_file(tmp_path), ledger)["destinations"] == ["ORTHANC2", PROBE]


def test_a_down_endpoint_is_avoided(tmp_path: Path, ledger: Ledger) -> None:
    publish(ledger, {"ORTHANC1": 40, "ORTHANC2": 10, PROBE: 50},
            down={"ORTHANC2": time.time() - 5})

    result = run(write_file(tmp_path), ledger)

    assert result["destinations"] == ["ORTHANC1", PROBE]
    assert "ORTHANC2=10 unavailable" in str(result["reason"])


def test_a_stale_published_status_is_not_trusted(tmp_path: Path, ledger: Ledger,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    long_ago = time.time() - STATUS_FRESH_SECONDS - 60
    with monkeypatch.context() as patch:
        patch.setattr("dde.store.status_board.time", SimpleNamespace(time=lambda: long_ago))
        publish(ledger, {"ORTHANC1": 40, "ORTHANC2": 10, PROBE: 50},
                down={"ORTHANC2": long_ago})

    result = run(write_file(tmp_path), ledger)

    # neither the old 'down' nor the old loads count: both 0, the tie goes to ORTHANC1
    assert result["destinations"] == ["ORTHANC1", PROBE]
    assert "unavailable" not in str(result["reason"])


def test_a_pinned_study_follows_its_pin(tmp_path: Path, ledger: Ledger) -> None:
    study = generate_uid()
    pin(ledger, study, "ORTHANC1")
    publish(ledger, {"ORTHANC1": 1000, "ORTHANC2": 0, PROBE: 0})

    result = run(write_file(tmp_path, study), ledger)

    assert result["destinations"] == ["ORTHANC1", PROBE]
    assert "pinned to ORTHANC1" in str(result["reason"])


def test_a_pinned_study_stays_while_its_endpoint_is_down_less_than_failover(
        tmp_path: Path, ledger: Ledger) -> None:
    study = generate_uid()
    pin(ledger, study, "ORTHANC1")
    publish(ledger, {"ORTHANC1": 0, "ORTHANC2": 0, PROBE: 0},
            down={"ORTHANC1": time.time() - FAILOVER / 2})

    assert run(write_file(tmp_path, study), ledger)["destinations"] == ["ORTHANC1", PROBE]


def test_a_pinned_study_moves_when_its_endpoint_is_down_past_failover(
        tmp_path: Path, ledger: Ledger) -> None:
    study = generate_uid()
    pin(ledger, study, "ORTHANC1")
    publish(ledger, {"ORTHANC1": 0, "ORTHANC2": 500, PROBE: 0},
            down={"ORTHANC1": time.time() - FAILOVER - 10})

    result = run(write_file(tmp_path, study), ledger)

    assert result["destinations"] == ["ORTHANC2", PROBE]
    assert "study moved" in str(result["reason"])


def test_explain_writes_nothing(tmp_path: Path, ledger: Ledger) -> None:
    publish(ledger, {"ORTHANC1": 0, "ORTHANC2": 0, PROBE: 0})
    study = generate_uid()
    before = (ledger.diagnostics.count("instances"), ledger.diagnostics.count("deliveries"))

    run(write_file(tmp_path, study), ledger)

    assert (ledger.diagnostics.count("instances"),
            ledger.diagnostics.count("deliveries")) == before
    assert ledger.operators.pin_for(study, "storage") is None


def test_rules_decide_with_the_calling_aet_given(tmp_path: Path, ledger: Ledger) -> None:
    publish(ledger, {"ORTHANC1": 40, "ORTHANC2": 10, PROBE: 0})

    mr = run(write_file(tmp_path, modality="MR"), ledger, rules())
    research = run(write_file(tmp_path, description="Brain"), ledger, rules(), "RESEARCH_X")
    clinic = run(write_file(tmp_path, description="Brain"), ledger, rules(), "CLINIC")

    assert (mr["rule"], mr["destinations"]) == ("mr-to-orthanc2", ["ORTHANC2", PROBE])
    assert (research["rule"], research["destinations"]) == (
        "research-copy+default", ["ORTHANC1", "ORTHANC2", PROBE])
    assert (clinic["rule"], clinic["destinations"]) == ("default", ["ORTHANC2", PROBE])


def test_a_discarded_instance(tmp_path: Path, ledger: Ledger) -> None:
    result = run(write_file(tmp_path, patient_id="PHANTOM"), ledger, rules())

    assert result["discard"] is True
    assert result["destinations"] == [] and result["rule"] == "drop-tests"


def test_no_route_is_reported_as_refused(tmp_path: Path, ledger: Ledger) -> None:
    only_mr = parse_rules("rules:\n  - {name: mr, when: {Modality: MR}, route: [ORTHANC2]}\n")

    result = run(write_file(tmp_path), ledger, only_mr)

    assert result["refused"] is True
    assert result["rule"] is None and result["destinations"] == []
    assert "no rule matches" in str(result["reason"])


def test_all_storage_down_is_reported_as_refused(tmp_path: Path, ledger: Ledger) -> None:
    now = time.time()
    publish(ledger, {"ORTHANC1": 0, "ORTHANC2": 0, PROBE: 0},
            down={"ORTHANC1": now, "ORTHANC2": now})

    result = run(write_file(tmp_path), ledger)

    assert result["refused"] is True
    assert "no endpoint of group 'storage' is available" in str(result["reason"])


def test_a_file_that_is_not_dicom_is_an_explain_error(tmp_path: Path, ledger: Ledger) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"this is not a DICOM file" * 20)

    with pytest.raises(ExplainError, match="not a DICOM Part-10 file"):
        run(path, ledger)


def test_a_truncated_dataset_is_an_explain_error(tmp_path: Path, ledger: Ledger) -> None:
    path = write_file(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])  # cut inside the pixel data

    with pytest.raises(ExplainError, match="would refuse it"):
        run(path, ledger)


def test_a_missing_file_is_an_explain_error(tmp_path: Path, ledger: Ledger) -> None:
    with pytest.raises(ExplainError, match="nope.dcm"):
        run(tmp_path / "nope.dcm", ledger)


def test_without_a_ledger_it_says_to_start_the_router(tmp_path: Path) -> None:
    with pytest.raises(ExplainError, match="no ledger"):
        run(write_file(tmp_path), None)
