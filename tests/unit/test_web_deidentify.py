"""De-identification through the API, as the CLI shows it: ``PUT /api/rules`` refuses a
rule whose salt secret cannot be read (naming it, never a value), route explain (the rule
tester) says which rule would de-identify the file and whether it would be held back, and
the instance document says how each delivery was de-identified, without patient data."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from pydicom.uid import generate_uid
from tests.support.unitkit import new_instance, part10_bytes
from tests.support.webkit import AUTH, WebKit
from tests.unit.test_web_api import cli_json, get, kit  # noqa: F401 (the fixture)

from dde.cli import main
from dde.routing.route import Route
from dde.store.records import NewVariant
from dde.synthetic import make_instance

RULES = """\
rules:
  - name: research
    deidentify: {profile: basic, options: [retain-uids], salt_secret: research}
    route: [ORTHANC2]
    continue: true
  - name: clinical
    route: [ORTHANC1]
"""
SALT = "web-test-salt"
METHOD = "profile basic, options retain-uids"
HELD = "held back: burned-in annotation (…)"


def burned_in_file(tmp_path: Path) -> Path:
    ds = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                       rows=8, columns=8, patient_name="Doe^Jane")
    ds.BurnedInAnnotation = "YES"
    path = tmp_path / "burned.dcm"
    path.write_bytes(part10_bytes(ds))
    return path


def test_rules_whose_salt_cannot_be_read_are_refused(kit: WebKit) -> None:  # noqa: F811
    response = kit.client.put("/api/rules", content=RULES,
                              headers={**AUTH, "content-type": "text/plain"})
    assert response.status_code == 422, response.text
    assert "research" in response.text and "secrets" in response.text
    secrets = kit.services.home.root / "secrets"
    secrets.mkdir()
    (secrets / "research").write_text(SALT)
    response = kit.client.put("/api/rules", content=RULES,
                              headers={**AUTH, "content-type": "text/plain"})
    assert response.status_code == 200, response.text
    assert SALT not in response.text


def test_the_rule_tester_shows_a_held_back_file(kit: WebKit,  # noqa: F811
                                                tmp_path: Path) -> None:
    kit.services.home.rules_file.write_text(RULES)
    path = burned_in_file(tmp_path)

    response = kit.client.post("/api/route/explain",
                               files={"file": ("x.dcm", path.read_bytes())}, headers=AUTH)

    assert response.status_code == 200, response.text
    decision = response.json()
    (plan,) = decision["deidentify"]
    assert plan["rule"] == "research" and plan["destinations"] == ["ORTHANC2"]
    assert plan["method"] == METHOD and "burned-in annotation" in plan["held_back"]
    assert decision == cli_json(kit, "route", "explain", str(path), "--json")
    printed = CliRunner().invoke(main, ["--home", str(kit.services.home.root), "route",
                                        "explain", str(path)])
    assert printed.exit_code == 0, printed.output
    assert f"de-identified by rule research ({METHOD}) for ORTHANC2:" in printed.output
    assert "held back: burned-in annotation" in printed.output
    assert "Doe" not in printed.output


def test_the_instance_document_says_how_it_was_deidentified(kit: WebKit) -> None:  # noqa: F811
    instance = new_instance("ab/original.dcm")
    route = Route("research+clinical", ("ORTHANC2", "ORTHANC1"), (),
                  variants=(("ORTHANC2", "research"),))
    kit.ledger.intake.ingest(instance, lambda _: route, [
        NewVariant("research", "ab/copy.dcm", 10, "[]", METHOD, "2.25.42")])
    uid = instance.sop_instance_uid

    document = get(kit, f"/api/instances/{uid}")

    assert document == cli_json(kit, "where", uid, "--json")
    shown = {d["endpoint"]: d for d in document["deliveries"]}
    assert shown["ORTHANC2"]["deidentified"] == METHOD
    assert shown["ORTHANC2"]["sent_sop_instance_uid"] == "2.25.42"
    assert shown["ORTHANC1"]["deidentified"] is None
    printed = CliRunner().invoke(main, ["--home", str(kit.services.home.root), "where", uid])
    assert f"de-identified by rule research ({METHOD}) for ORTHANC2, sent as 2.25.42" \
        in printed.output


def test_a_held_back_delivery_is_failed_with_the_reason(kit: WebKit) -> None:  # noqa: F811
    instance = new_instance("ab/original.dcm")
    route = Route("research+clinical", ("ORTHANC2", "ORTHANC1"), (),
                  variants=(("ORTHANC2", "research"),))
    kit.ledger.intake.ingest(instance, lambda _: route, [
        NewVariant("research", None, 0, "[]", METHOD, None, HELD)])

    document = get(kit, f"/api/instances/{instance.sop_instance_uid}")

    shown = {d["endpoint"]: d for d in document["deliveries"]}
    assert (shown["ORTHANC2"]["state"], shown["ORTHANC2"]["last_error"]) == ("failed", HELD)
    assert shown["ORTHANC1"]["state"] == "pending"
    assert json.dumps(document).count("held back") == 1
