"""Edits through the API, as the CLI shows them: the instance document (old values hidden
unless ``show_phi=true``, as ``dde where --show-phi``) and route explain (what each rule's
set/remove would change in the file, as ``dde route explain --json``)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from tests.support.unitkit import new_instance
from tests.support.webkit import AUTH, WebKit, dicom_bytes
from tests.unit.test_web_api import cli_json, get, kit  # noqa: F401 (the fixture)

from dde.cli import main
from dde.dicom.edits import RemoveElement
from dde.routing.route import Route
from dde.store.records import NewVariant

EDITS = json.dumps([{"tag": "(0010,1000)", "keyword": "OtherPatientIDs", "action": "remove",
                     "old": "SECRET", "new": None},
                    {"tag": "(0008,0080)", "keyword": "InstitutionName", "action": "set",
                     "old": None, "new": "North Campus"}])
RULES = """\
rules:
  - name: coerced
    set: {InstitutionName: "North Campus"}
    remove: [PatientID]
    route: [ORTHANC1]
    continue: true
  - name: plain
    route: [ORTHANC2]
mirror: [ORTHANC-PROBE]
"""


def test_the_instance_document_hides_old_values_unless_asked(kit: WebKit) -> None:  # noqa: F811
    instance = new_instance("ab/original.dcm")
    route = Route("coerced+plain", ("ORTHANC1", "ORTHANC2"), (),
                  variants=(("ORTHANC1", "coerced"),),
                  edits=(("coerced", (RemoveElement(0x00101000, "OtherPatientIDs"),)),))
    kit.ledger.intake.ingest(instance, lambda _: route,
                             [NewVariant("coerced", "ab/variant.dcm", 10, EDITS)])
    uid = instance.sop_instance_uid

    hidden = get(kit, f"/api/instances/{uid}")
    shown = get(kit, f"/api/instances/{uid}", show_phi="true")

    assert hidden == cli_json(kit, "where", uid, "--json")
    assert shown == cli_json(kit, "where", uid, "--json", "--show-phi")
    coerced = {d["endpoint"]: d for d in hidden["deliveries"]}["ORTHANC1"]
    assert coerced["variant"] == "coerced"
    assert coerced["edits"] == [
        {"tag": "(0010,1000)", "keyword": "OtherPatientIDs", "action": "remove",
         "old": "(hidden)", "new": None},
        {"tag": "(0008,0080)", "keyword": "InstitutionName", "action": "set", "old": None,
         "new": "North Campus"}]
    assert {d["endpoint"]: d for d in shown["deliveries"]}["ORTHANC1"]["edits"][0]["old"] \
        == "SECRET"
    assert {d["endpoint"]: d["variant"] for d in hidden["deliveries"]}["ORTHANC2"] is None


def test_explain_shows_what_each_rule_would_change(kit: WebKit,  # noqa: F811
                                                   tmp_path: Path) -> None:
    kit.services.home.rules_file.write_text(RULES)
    raw, _ = dicom_bytes()

    response = kit.client.post("/api/route/explain", files={"file": ("x.dcm", raw)},
                               headers=AUTH)

    assert response.status_code == 200, response.text
    decision = response.json()
    (plan,) = decision["edits"]
    assert plan["rule"] == "coerced" and plan["error"] is None
    assert plan["destinations"] == ["ORTHANC1", "ORTHANC-PROBE"]
    changes = {c["keyword"]: c for c in plan["changes"]}
    assert changes["InstitutionName"]["new"] == "North Campus"
    assert changes["PatientID"]["action"] == "remove" and changes["PatientID"]["new"] is None
    path = tmp_path / "x.dcm"
    path.write_bytes(raw)
    assert decision == cli_json(kit, "route", "explain", str(path), "--json")


def test_route_explain_prints_the_edits(kit: WebKit, tmp_path: Path) -> None:  # noqa: F811
    kit.services.home.rules_file.write_text(RULES)
    path = tmp_path / "x.dcm"
    path.write_bytes(dicom_bytes()[0])

    result = CliRunner().invoke(main, ["--home", str(kit.services.home.root), "route",
                                       "explain", str(path)])

    assert result.exit_code == 0, result.output
    assert "edits of rule coerced (to ORTHANC1, ORTHANC-PROBE):" in result.output
    assert "(0008,0080) InstitutionName: North Campus (was absent)" in result.output
    assert "(0010,0020) PatientID: removed (was " in result.output
