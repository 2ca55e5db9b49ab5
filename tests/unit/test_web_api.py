"""The REST API over a real ledger, spool and configuration files: endpoints, rules, route
explain, the ledger, the queue, stats; the shapes agree with the CLI's ``--json``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from tests.support.unitkit import MR_RULES as RULES
from tests.support.unitkit import delivery_rows, ingest_to
from tests.support.webkit import AUTH, TOKEN, WebKit, dicom_bytes, make_webkit

from dde.cli import main
from dde.config_store import ConfigStore
from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME",
                     "DDE_WEB_HOST", "DDE_WEB_PORT", "DDE_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


def cli_json(kit: WebKit, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--home", str(kit.services.home.root), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def get(kit: WebKit, path: str, **params: Any) -> Any:
    response = kit.client.get(path, headers=AUTH, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: Any, status: int, error: str, fragment: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert fragment in body["detail"], body
    assert "Traceback" not in response.text
    return body


def file_settings(kit: WebKit) -> Any:
    return ConfigStore(kit.services.home).settings()


def delivered_and_failed(kit: WebKit, received_at: float | None = None,
                         delivered_at: float | None = None,
                         queued_at: float | None = None) -> tuple[int, int, int]:
    """Three instances: one delivered to ORTHANC1 (+ probe), one whose probe copy failed,
    one waiting for ORTHANC2. Returns their ids. The first can be received (``received_at``)
    and delivered (``delivered_at``) earlier, the third queued earlier (``queued_at``)."""
    ledger = kit.ledger
    done = ingest_to(ledger, ["ORTHANC1"], ["ORTHANC-PROBE"], study_instance_uid="1.2.1",
                     received_at=received_at)
    rows = delivery_rows(ledger, done)
    ledger.queue.record_outcomes([DeliveryOutcome(rows["ORTHANC1"][0], DeliveryState.DELIVERED),
                            DeliveryOutcome(rows["ORTHANC-PROBE"][0], DeliveryState.DELIVERED)],
                                 now=delivered_at)
    failed = ingest_to(ledger, ["ORTHANC1"], ["ORTHANC-PROBE"], study_instance_uid="1.2.1")
    rows = delivery_rows(ledger, failed)
    ledger.queue.record_outcomes([DeliveryOutcome(rows["ORTHANC1"][0], DeliveryState.DELIVERED),
                            DeliveryOutcome(rows["ORTHANC-PROBE"][0], DeliveryState.FAILED,
                                            "0xA700 out of resources")])
    waiting = ingest_to(ledger, ["ORTHANC2"], study_instance_uid="1.2.2", received_at=queued_at)
    return done, failed, waiting


# -- endpoints -----------------------------------------------------------------------------
def test_list_endpoints_is_the_cli_list(kit: WebKit) -> None:
    delivered_and_failed(kit)
    listed = get(kit, "/api/endpoints")

    assert listed == cli_json(kit, "endpoints", "list", "--json")
    by_name = {e["name"]: e for e in listed}
    assert by_name["ORTHANC1"]["delivered"] == 2
    assert by_name["ORTHANC-PROBE"]["failed"] == 1
    assert by_name["ORTHANC2"]["queued"] == 1


def test_add_an_endpoint(kit: WebKit) -> None:
    body = {"name": "ORTHANC3", "aet": "ORTHANC3", "host": "10.0.0.3", "port": 4245,
            "url": "http://10.0.0.3:8042", "groups": ["storage"], "weight": 2}
    response = kit.client.post("/api/endpoints", json=body, headers=AUTH)

    assert response.status_code == 201, response.text
    row = response.json()
    assert (row["name"], row["aet"], row["host"], row["port"], row["groups"]) == (
        "ORTHANC3", "ORTHANC3", "10.0.0.3", 4245, ["storage"])
    assert row["state"] == "enabled" and row["weight"] == 2.0 and row["queued"] == 0
    added = file_settings(kit).endpoint("ORTHANC3")
    assert added is not None and added.port == 4245 and added.groups == ["storage"]
    assert "ORTHANC3" in [e["name"] for e in get(kit, "/api/endpoints")]


def test_add_a_dicomweb_endpoint_with_a_token_never_answered_back(kit: WebKit) -> None:
    token = "api-token-for-stow-7c1d2e"
    body = {"name": "WEB1", "kind": "dicomweb", "url": "http://10.0.0.9:8042/dicom-web",
            "groups": ["storage"], "token": token}
    response = kit.client.post("/api/endpoints", json=body, headers=AUTH)

    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "dicomweb" and response.json()["aet"] == "WEB1"
    listing = kit.client.get("/api/endpoints", headers=AUTH).text
    assert token not in response.text and token not in listing
    added = file_settings(kit).endpoint("WEB1")
    assert added is not None and added.token is not None
    assert added.token.get_secret_value() == token


def test_the_api_takes_no_secret_file_path(kit: WebKit) -> None:
    body = {"name": "WEB1", "kind": "dicomweb", "url": "http://10.0.0.9/dicom-web",
            "token_file": "/etc/shadow"}
    assert kit.client.post("/api/endpoints", json=body, headers=AUTH).status_code == 422


def test_adding_an_existing_name_is_409(kit: WebKit) -> None:
    body = {"name": "ORTHANC1", "aet": "X", "host": "h", "port": 1}
    assert_error(kit.client.post("/api/endpoints", json=body, headers=AUTH), 409, "conflict",
                 "exists already")


@pytest.mark.parametrize(("body", "fragment"), [
    ({"aet": "X", "host": "h", "port": 1}, "name"),
    ({"name": "N", "aet": "X" * 17, "host": "h", "port": 1}, "aet"),
    ({"name": "N", "aet": "X", "host": "h", "port": 0}, "port"),
    ({"name": "bad name", "aet": "X", "host": "h", "port": 1}, "name"),
    ({"name": "N", "aet": "X", "host": "h", "port": 1, "kind": "orthanc-rest"}, "url"),
    ({"name": "N", "aet": "X", "host": "h", "port": 1, "colour": "red"}, "colour"),
    ({"name": "N", "aet": "X", "host": "h", "port": "many"}, "port"),
])
def test_an_invalid_endpoint_is_422_and_nothing_changes(kit: WebKit, body: dict[str, Any],
                                                        fragment: str) -> None:
    before = kit.services.home.config_file.read_text()
    response = kit.client.post("/api/endpoints", json=body, headers=AUTH)

    error = assert_error(response, 422, "validation_error", fragment)
    assert error["problems"] and all("msg" in p for p in error["problems"])
    assert kit.services.home.config_file.read_text() == before


def test_patch_drains_enables_and_changes_fields(kit: WebKit) -> None:
    response = kit.client.patch("/api/endpoints/ORTHANC2", json={"state": "draining"},
                                headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "draining"
    assert file_settings(kit).endpoint("ORTHANC2").state.value == "draining"

    response = kit.client.patch("/api/endpoints/ORTHANC2",
                                json={"state": "enabled", "weight": 3, "groups": ["storage",
                                                                                 "fast"]},
                                headers=AUTH)
    assert response.status_code == 200
    changed = file_settings(kit).endpoint("ORTHANC2")
    assert (changed.state.value, changed.weight, changed.groups) == ("enabled", 3.0,
                                                                     ["storage", "fast"])
    response = kit.client.patch("/api/endpoints/ORTHANC2", json={"state": "disabled"},
                                headers=AUTH)
    assert response.json()["state"] == "disabled"


def test_patch_errors(kit: WebKit) -> None:
    client = kit.client
    assert_error(client.patch("/api/endpoints/NOPE", json={"state": "draining"}, headers=AUTH),
                 404, "not_found", "NOPE")
    assert_error(client.patch("/api/endpoints/ORTHANC1", json={}, headers=AUTH),
                 422, "validation_error", "nothing to change")
    assert_error(client.patch("/api/endpoints/ORTHANC1", json={"state": "asleep"},
                              headers=AUTH), 422, "validation_error", "state")
    assert_error(client.patch("/api/endpoints/ORTHANC1", json={"weight": -1}, headers=AUTH),
                 422, "validation_error", "weight")
    assert_error(client.patch("/api/endpoints/ORTHANC1", json={"kind": "orthanc-rest"},
                              headers=AUTH), 422, "validation_error", "url")


def test_a_patch_that_would_break_the_rules_is_409(kit: WebKit) -> None:
    kit.services.home.rules_file.write_text(RULES)
    response = kit.client.patch("/api/endpoints/ORTHANC1", json={"groups": []}, headers=AUTH)
    assert response.status_code == 200
    response = kit.client.patch("/api/endpoints/ORTHANC2", json={"groups": []}, headers=AUTH)
    assert_error(response, 409, "conflict", "break the rules")
    assert file_settings(kit).endpoint("ORTHANC2").groups == ["storage"]


def test_delete_an_endpoint(kit: WebKit) -> None:
    response = kit.client.delete("/api/endpoints/ORTHANC2", headers=AUTH)

    assert response.status_code == 200, response.text
    assert response.json() == {"removed": "ORTHANC2", "redirected": 0, "target": None}
    assert file_settings(kit).endpoint("ORTHANC2") is None
    assert_error(kit.client.delete("/api/endpoints/ORTHANC2", headers=AUTH), 404, "not_found")


def test_delete_with_waiting_deliveries_needs_force(kit: WebKit) -> None:
    _, _, waiting = delivered_and_failed(kit)

    response = kit.client.delete("/api/endpoints/ORTHANC2", headers=AUTH)
    assert_error(response, 409, "conflict", "1 deliveries are still queued")
    assert file_settings(kit).endpoint("ORTHANC2") is not None

    response = kit.client.delete("/api/endpoints/ORTHANC2", params={"force": "true"},
                                 headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"removed": "ORTHANC2", "redirected": 1, "target": "ORTHANC1"}
    assert set(delivery_rows(kit.ledger, waiting)) == {"ORTHANC1"}
    assert ["ORTHANC1"] in kit.services.dispatcher.woken


# -- rules ---------------------------------------------------------------------------------
def test_get_rules_shows_the_default_then_the_applied_document(kit: WebKit) -> None:
    rules = get(kit, "/api/rules")
    assert rules["default"] is True and rules["rules"] == ["default"]
    assert "no rules.yaml" in rules["text"] and rules["mirror"] == ["ORTHANC-PROBE"]

    response = kit.client.put("/api/rules", content=RULES,
                              headers={**AUTH, "content-type": "application/yaml"})
    assert response.status_code == 200, response.text
    assert response.json() == {"applied": 2, "rules": ["mr-to-orthanc2", "default"],
                               "mirror": ["ORTHANC-PROBE"]}
    rules = get(kit, "/api/rules")
    assert rules == {"text": RULES, "default": False, "rules": ["mr-to-orthanc2", "default"],
                     "mirror": ["ORTHANC-PROBE"]}
    assert kit.services.home.rules_file.read_text() == RULES


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", "application/x-yaml"])
def test_put_rules_as_text(kit: WebKit, content_type: str) -> None:
    response = kit.client.put("/api/rules", content=RULES.encode(),
                              headers={**AUTH, "content-type": content_type})
    assert response.status_code == 200, response.text
    assert kit.services.home.rules_file.read_text() == RULES


def test_put_rules_as_json(kit: WebKit) -> None:
    response = kit.client.put("/api/rules", json={"text": RULES}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert_error(kit.client.put("/api/rules", json={"rules": RULES}, headers=AUTH), 422,
                 "validation_error", "text")
    assert_error(kit.client.put("/api/rules", content=b"{", headers={
        **AUTH, "content-type": "application/json"}), 400, "bad_request", "JSON")


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("rules:\n  - name: a\n    route: [NOPE]\n", 2, "unknown endpoint 'NOPE'"),
    ("rules:\n  - name: a\n    route: [ORTHANC1\n", 4, "not valid YAML"),
    ("rules:\n  - name: a\n    when: {Modality: MR}\n    route: {group: nogroup}\n", 2,
     "group 'nogroup'"),
])
def test_invalid_rules_are_422_with_the_line_and_the_old_rules_stay(
        kit: WebKit, text: str, line: int, fragment: str) -> None:
    kit.services.home.rules_file.write_text(RULES)
    response = kit.client.put("/api/rules", content=text,
                              headers={**AUTH, "content-type": "text/plain"})

    body = assert_error(response, 422, "invalid_rules", fragment)
    assert "previous rules stay" in body["detail"] and fragment in body["reason"]
    assert body["line"] == line
    assert kit.services.home.rules_file.read_text() == RULES
    assert get(kit, "/api/rules")["rules"] == ["mr-to-orthanc2", "default"]


def test_put_rules_needs_a_text_type(kit: WebKit) -> None:
    response = kit.client.put("/api/rules", content=RULES,
                              headers={**AUTH, "content-type": "application/octet-stream"})
    assert_error(response, 415, "unsupported_media_type")
    response = kit.client.put("/api/rules", content=b"\xff\xfe",
                              headers={**AUTH, "content-type": "text/plain"})
    assert_error(response, 400, "bad_request", "UTF-8")
    assert not kit.services.home.rules_file.exists()


def test_explain_a_file_as_the_cli_does(kit: WebKit, tmp_path: Path) -> None:
    kit.services.home.rules_file.write_text(RULES)
    raw, _ = dicom_bytes()
    response = kit.client.post("/api/route/explain", files={"file": ("x.dcm", raw)},
                               headers=AUTH)

    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["rule"] == "default"
    assert decision["destinations"][-1] == "ORTHANC-PROBE" and len(decision["destinations"]) == 2
    path = tmp_path / "x.dcm"
    path.write_bytes(raw)
    assert decision == cli_json(kit, "route", "explain", str(path), "--json")
    assert kit.instance_count() == 0 and kit.spool_files() == []


def test_explain_with_an_origin(kit: WebKit) -> None:
    kit.services.home.rules_file.write_text(
        "rules:\n  - name: research\n    when: {CallingAET: RESEARCH}\n    route: [ORTHANC2]\n"
        "  - name: default\n    route: {group: storage}\n")
    raw, _ = dicom_bytes()
    response = kit.client.post("/api/route/explain", files={"file": ("x.dcm", raw)},
                               data={"calling_aet": "RESEARCH"}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["rule"] == "research"
    assert response.json()["destinations"] == ["ORTHANC2"]


def test_explain_errors(kit: WebKit) -> None:
    client = kit.client
    assert_error(client.post("/api/route/explain", files={"file": ("x", b"not dicom")},
                             headers=AUTH), 422, "cannot_explain", "not a DICOM Part-10")
    assert_error(client.post("/api/route/explain", files={"file": ("x", b"")}, headers=AUTH),
                 400, "empty_upload")
    assert_error(client.post("/api/route/explain", data={"calling_aet": "X"}, headers=AUTH),
                 422, "validation_error", "file")


# -- the ledger ----------------------------------------------------------------------------
def test_an_instance_is_as_dde_where_json(kit: WebKit) -> None:
    _, failed, _ = delivered_and_failed(kit)
    (uid,) = [i.sop_instance_uid for i in kit.ledger.diagnostics.instances() if i.id == failed]

    document = get(kit, f"/api/instances/{uid}")

    assert document == cli_json(kit, "where", uid, "--json")
    assert [(d["endpoint"], d["state"]) for d in document["deliveries"]] == [
        ("ORTHANC1", "delivered"), ("ORTHANC-PROBE", "failed")]


def test_an_unknown_instance_is_404_json(kit: WebKit) -> None:
    response = kit.client.get("/api/instances/1.2.3.4", headers=AUTH)
    assert_error(response, 404, "not_found", "1.2.3.4")


def test_search_by_patient_accession_study_and_time_with_pages(kit: WebKit) -> None:
    ledger = kit.ledger
    old = time.time() - 3600
    ingest_to(ledger, ["ORTHANC1"], study_instance_uid="1.9.1", received_at=old)
    for _ in range(3):
        ingest_to(ledger, ["ORTHANC1"], study_instance_uid="1.9.2", patient_id="P2",
                  accession_number="A2")

    everything = get(kit, "/api/instances")
    assert everything["total"] == 4 and len(everything["instances"]) == 4
    assert everything["instances"][-1]["study_instance_uid"] == "1.9.1"  # newest first
    assert get(kit, "/api/instances", patient_id="P2")["total"] == 3
    assert get(kit, "/api/instances", accession="A2", study_uid="1.9.2")["total"] == 3
    assert get(kit, "/api/instances", patient_id="P2", study_uid="1.9.1")["total"] == 0
    assert get(kit, "/api/instances", since=str(old + 1))["total"] == 3
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(old + 1))
    assert get(kit, "/api/instances", since=iso)["total"] == 3

    first = get(kit, "/api/instances", patient_id="P2", limit=2)
    second = get(kit, "/api/instances", patient_id="P2", limit=2, offset=2)
    assert (first["total"], len(first["instances"]), len(second["instances"])) == (3, 2, 1)
    uids = [i["sop_instance_uid"] for i in first["instances"] + second["instances"]]
    assert len(set(uids)) == 3
    found = first["instances"][0]
    assert found["patient_id"] == "P2" and found["accession_number"] == "A2"
    assert [d["endpoint"] for d in found["deliveries"]] == ["ORTHANC1"]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"offset": -1},
                                    {"since": "yesterday"}, {"limit": "x"}])
def test_search_validation_errors(kit: WebKit, params: dict[str, Any]) -> None:
    response = kit.client.get("/api/instances", params=params, headers=AUTH)
    assert_error(response, 422, "validation_error")


# -- queue ---------------------------------------------------------------------------------
def test_queue_is_as_dde_queue_json(kit: WebKit) -> None:
    delivered_and_failed(kit)
    document = get(kit, "/api/queue")

    assert document == cli_json(kit, "queue", "--json")
    assert sorted((d["endpoint"], d["state"]) for d in document["deliveries"]) == [
        ("ORTHANC-PROBE", "failed"), ("ORTHANC2", "pending")]
    assert len(get(kit, "/api/queue", limit=1)["deliveries"]) == 1


def test_retry_one_delivery(kit: WebKit) -> None:
    _, failed, _ = delivered_and_failed(kit)
    probe = delivery_rows(kit.ledger, failed)["ORTHANC-PROBE"][0]
    stored = delivery_rows(kit.ledger, failed)["ORTHANC1"][0]

    response = kit.client.post(f"/api/deliveries/{probe}/retry", headers=AUTH)

    assert response.status_code == 200, response.text
    assert response.json() == {"id": probe, "previous": "failed", "state": "pending"}
    assert delivery_rows(kit.ledger, failed)["ORTHANC-PROBE"][1:3] == ("pending", 0)
    assert kit.services.dispatcher.woken, "the dispatcher was not woken"
    assert_error(kit.client.post(f"/api/deliveries/{stored}/retry", headers=AUTH), 409,
                 "conflict", "already delivered")
    assert_error(kit.client.post("/api/deliveries/999/retry", headers=AUTH), 404, "not_found")
    assert_error(kit.client.post("/api/deliveries/abc/retry", headers=AUTH), 422,
                 "validation_error")


def test_retry_every_failed_delivery(kit: WebKit) -> None:
    delivered_and_failed(kit)
    response = kit.client.post("/api/queue/retry-failed", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"requeued": 1}
    assert kit.ledger.operators.state_counts()["ORTHANC-PROBE"].get("failed", 0) == 0
    assert kit.client.post("/api/queue/retry-failed", headers=AUTH).json() == {"requeued": 0}


# -- stats ---------------------------------------------------------------------------------
def test_stats_per_endpoint_and_per_minute(kit: WebKit) -> None:
    now = time.time()
    delivered_and_failed(kit, received_at=now - 180, delivered_at=now - 120, queued_at=now - 30)

    stats = get(kit, "/api/stats")

    assert len(stats["minutes"]) == 15 and len(stats["received_per_minute"]) == 15
    assert sum(stats["received_per_minute"]) == 3
    assert stats["received_per_minute"][-1] >= 1
    by_name = {e["name"]: e for e in stats["endpoints"]}
    one, two, probe = by_name["ORTHANC1"], by_name["ORTHANC2"], by_name["ORTHANC-PROBE"]
    assert (one["delivered"], one["failed"], one["queued"]) == (2, 0, 0)
    assert sum(one["delivered_per_minute"]) == 2 == one["delivered_last_minutes"]
    assert one["delivered_per_minute"].count(1) == 2  # two different minutes
    assert one["oldest_queued_age_seconds"] is None
    assert (two["queued"], two["delivered_last_minutes"]) == (1, 0)
    assert 29 <= two["oldest_queued_age_seconds"] < 120
    assert (probe["delivered"], probe["failed"]) == (1, 1)
    assert {"health", "load", "breaker", "state"} <= set(one)
    assert len(get(kit, "/api/stats", minutes=5)["minutes"]) == 5
    assert_error(kit.client.get("/api/stats", params={"minutes": 0}, headers=AUTH), 422,
                 "validation_error")


# -- errors --------------------------------------------------------------------------------
def test_unknown_routes_and_methods_are_json(kit: WebKit) -> None:
    assert_error(kit.client.get("/api/nothing", headers=AUTH), 404, "not_found")
    response = kit.client.put("/api/queue", headers=AUTH)
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


def test_an_unexpected_error_is_a_bare_500(kit: WebKit, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(kit.ledger.operators, "state_counts", broken)
    with caplog.at_level(logging.ERROR, logger="dde.web.errors"):
        response = kit.client.get("/api/queue", headers=AUTH)

    assert_error(response, 500, "internal_error")
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert "secret internal detail" in caplog.text  # the log has it, with the traceback
    assert TOKEN not in caplog.text


def test_a_body_over_the_limit_is_413_json(kit: WebKit) -> None:
    big = json.dumps({"text": "x" * (2 * 1024 * 1024)})
    response = kit.client.put("/api/rules", content=big,
                              headers={**AUTH, "content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")

    def chunks() -> Any:  # no Content-Length: the limit applies while reading
        for _ in range(3):
            yield b"x" * (512 * 1024)

    response = kit.client.put("/api/rules", content=chunks(),
                              headers={**AUTH, "content-type": "text/plain"})
    assert_error(response, 413, "payload_too_large")
    assert not kit.services.home.rules_file.exists()


def test_the_yaml_written_by_the_api_is_what_the_cli_reads(kit: WebKit) -> None:
    kit.client.post("/api/endpoints", headers=AUTH, json={
        "name": "ORTHANC3", "aet": "ORTHANC3", "host": "h", "port": 5, "groups": ["storage"]})
    listed = cli_json(kit, "endpoints", "list", "--json")
    assert [e["name"] for e in listed][-1] == "ORTHANC3"
    raw = yaml.safe_load(kit.services.home.config_file.read_text())
    assert raw["endpoints"][-1]["name"] == "ORTHANC3"


def test_storage_commitment_is_asked_for_through_the_api_and_the_cli(kit: WebKit) -> None:
    body = {"name": "ORTHANC3", "aet": "ORTHANC3", "host": "10.0.0.3", "port": 4245,
            "groups": ["storage"], "storage_commitment": True}
    response = kit.client.post("/api/endpoints", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    assert response.json()["storage_commitment"] is True
    result = CliRunner().invoke(main, [
        "--home", str(kit.services.home.root), "endpoints", "add", "ORTHANC4", "--aet",
        "ORTHANC4", "--host", "10.0.0.4", "--port", "4246", "--storage-commitment"])
    assert result.exit_code == 0, result.output
    assert "storage commitment" in result.output
    settings = file_settings(kit)
    assert [settings.endpoint(n).storage_commitment for n in  # type: ignore[union-attr]
            ("ORTHANC3", "ORTHANC4", "ORTHANC1")] == [True, True, False]

    changed = kit.client.patch("/api/endpoints/ORTHANC3", headers=AUTH,
                               json={"storage_commitment": False})
    assert changed.status_code == 200 and changed.json()["storage_commitment"] is False
    web = {"name": "WEB1", "kind": "dicomweb", "url": "http://10.0.0.5/dicom-web",
           "storage_commitment": True}
    assert_error(kit.client.post("/api/endpoints", json=web, headers=AUTH), 422,
                 "validation_error", "storage_commitment")
