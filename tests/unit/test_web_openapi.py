"""The OpenAPI document (``/openapi.json``, shown at ``/docs``) declares every JSON route's
answer and its errors; and every answer is its declared model with nothing dropped.

FastAPI filters an answer through its ``response_model``: a field the model lacks would
silently vanish. So each route's answer is compared, key order included, with the document
the route built (recorded by wrapping the function that builds it), and with its model's
round trip (``validate`` then ``dump``)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, TypeAdapter
from pydicom import dcmread
from tests.support.unitkit import bundled_file, delivery_rows, ingest_to
from tests.support.webkit import AUTH, TOKEN, WebKit, dicom_bytes, make_webkit, zip_of

from dde.endpoints import registry
from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState
from dde.store.status_board import PublishedStatus
from dde.web import api, api_ledger
from dde.web.schemas import (
    Decision,
    EndpointRemoved,
    EndpointRow,
    ErrorBody,
    HealthReport,
    HealthUnavailable,
    LoggedOut,
    LoginSession,
    RulesApplied,
    RulesDocument,
)
from dde.web.schemas_ledger import (
    InstanceDocument,
    QueueDocument,
    RetryAnswer,
    RetryFailedAnswer,
    SearchPage,
    StatsDocument,
    UploadResult,
)

MODELS: dict[tuple[str, str], Any] = {
    ("get", "/api/endpoints"): list[EndpointRow],
    ("post", "/api/endpoints"): EndpointRow,
    ("patch", "/api/endpoints/{name}"): EndpointRow,
    ("delete", "/api/endpoints/{name}"): EndpointRemoved,
    ("get", "/api/rules"): RulesDocument,
    ("put", "/api/rules"): RulesApplied,
    ("post", "/api/route/explain"): Decision,
    ("post", "/api/instances"): UploadResult,
    ("get", "/api/instances/{sop_instance_uid}"): InstanceDocument,
    ("get", "/api/instances"): SearchPage,
    ("get", "/api/queue"): QueueDocument,
    ("post", "/api/deliveries/{delivery_id}/retry"): RetryAnswer,
    ("post", "/api/queue/retry-failed"): RetryFailedAnswer,
    ("get", "/api/stats"): StatsDocument,
    ("get", "/healthz"): HealthReport,
    ("post", "/login"): LoginSession,
    ("post", "/logout"): LoggedOut,
}
"""The success model of each JSON route (the OpenAPI document must name it)."""

ERRORS: dict[tuple[str, str], set[int]] = {
    ("get", "/api/endpoints"): {401, 500},
    ("post", "/api/endpoints"): {401, 403, 409, 413, 422, 500},
    ("patch", "/api/endpoints/{name}"): {401, 403, 404, 409, 413, 422, 500},
    ("delete", "/api/endpoints/{name}"): {401, 403, 404, 409, 422, 500},
    ("get", "/api/rules"): {401, 404, 422, 500},
    ("put", "/api/rules"): {400, 401, 403, 409, 413, 415, 422, 500},
    ("post", "/api/route/explain"): {400, 401, 403, 413, 422, 500},
    ("post", "/api/instances"): {400, 401, 403, 413, 415, 422, 500},
    ("get", "/api/instances/{sop_instance_uid}"): {401, 404, 422, 500},
    ("get", "/api/instances"): {400, 401, 422, 500},
    ("get", "/api/queue"): {401, 422, 500},
    ("post", "/api/deliveries/{delivery_id}/retry"): {401, 403, 404, 409, 422, 500},
    ("post", "/api/queue/retry-failed"): {401, 403, 500},
    ("get", "/api/stats"): {401, 422, 500},
    ("post", "/login"): {400, 401, 415, 429},
    ("post", "/logout"): {403},
}
"""The error statuses each route can answer (every one as ErrorBody)."""

RULES = """\
rules:
  - name: no-sr
    when: {Modality: SR}
    action: discard
  - name: ct
    when: {Modality: CT}
    route: {group: storage}
mirror: [ORTHANC-PROBE]
"""
"""A rules document without a default: a file that is not CT nor SR gets no route."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME",
                     "DDE_WEB_HOST", "DDE_WEB_PORT", "DDE_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


@pytest.fixture
def openapi(kit: WebKit) -> dict[str, Any]:
    response = kit.client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def operations(openapi: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def json_operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """The operations that answer JSON: the API, /healthz, /login and /logout."""
    return [(m, p, o) for m, p, o in operations(openapi)
            if p.startswith("/api/") or p in ("/healthz", "/login", "/logout")]


def refs(schema: Any) -> list[str]:
    """Every ``$ref`` in a schema, nested ones too."""
    if isinstance(schema, dict):
        found = [schema["$ref"]] if "$ref" in schema else []
        return found + [r for value in schema.values() for r in refs(value)]
    if isinstance(schema, list):
        return [r for item in schema for r in refs(item)]
    return []


def component(openapi: dict[str, Any], ref: str) -> dict[str, Any]:
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), ref
    schema: dict[str, Any] = openapi["components"]["schemas"][ref.removeprefix(prefix)]
    return schema


def json_schema(response: dict[str, Any]) -> Any:
    return response.get("content", {}).get("application/json", {}).get("schema")


# -- the document --------------------------------------------------------------------------
def model_names(annotation: Any) -> set[str]:
    """The models a response type is made of (``list[X]``: X; ``X | Y``: both)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation.__name__}
    return {name for arg in get_args(annotation) for name in model_names(arg)}


def test_every_api_route_is_listed_here(openapi: dict[str, Any]) -> None:
    listed = {(m, p) for m, p, _ in json_operations(openapi)}
    assert listed == set(MODELS)
    assert set(ERRORS) <= listed


def test_each_route_declares_its_model(openapi: dict[str, Any]) -> None:
    for method, path, operation in json_operations(openapi):
        success = next(r for s, r in operation["responses"].items() if s.startswith("2"))
        named = {ref.rsplit("/", 1)[-1] for ref in refs(json_schema(success))}
        assert named == model_names(MODELS[method, path]), (method, path)


def test_every_json_route_declares_its_success_schema(openapi: dict[str, Any]) -> None:
    for method, path, operation in json_operations(openapi):
        success = [s for s in operation["responses"] if s.startswith("2")]
        assert len(success) == 1, (method, path, success)
        schema = json_schema(operation["responses"][success[0]])
        assert schema, f"{method} {path}: no JSON schema for {success[0]}"
        assert schema.get("additionalProperties") is not True, (method, path, schema)
        found = refs(schema)
        assert found, f"{method} {path}: the schema names no model: {schema}"
        for ref in found:
            model = component(openapi, ref)
            assert model.get("type") == "object" and model.get("properties"), (ref, model)


def test_routes_that_can_fail_declare_the_error_model(openapi: dict[str, Any]) -> None:
    for method, path, operation in json_operations(openapi):
        declared = {int(s) for s in operation["responses"] if s[0] in "45"}
        if path == "/healthz":
            continue
        assert declared == ERRORS.get((method, path), set()), (method, path)
        for status in declared:
            response = operation["responses"][str(status)]
            assert json_schema(response) == {"$ref": "#/components/schemas/ErrorBody"}, (
                method, path, status)
            assert response["description"], (method, path, status)


def test_changes_declare_csrf_and_routes_with_parameters_declare_422(
        openapi: dict[str, Any]) -> None:
    for method, path, operation in json_operations(openapi):
        if not path.startswith("/api/"):
            continue
        declared = set(operation["responses"])
        assert {"401", "500"} <= declared, (method, path)
        if method != "get":
            assert "403" in declared, (method, path)
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in declared, (method, path)


def test_fastapis_validation_error_model_is_not_declared(openapi: dict[str, Any]) -> None:
    """The error handlers answer request validation errors as ErrorBody, not as FastAPI's
    ``HTTPValidationError``: the document must say so."""
    for method, path, operation in operations(openapi):
        assert "HTTPValidationError" not in json.dumps(operation["responses"]), (method, path)


def test_the_error_model_is_error_and_detail(openapi: dict[str, Any]) -> None:
    schema = component(openapi, "#/components/schemas/ErrorBody")
    assert set(schema["required"]) == {"error", "detail"}
    assert schema["properties"]["error"]["type"] == "string"
    assert schema.get("additionalProperties") is True  # some errors add fields


def test_healthz_declares_its_503_answer(openapi: dict[str, Any]) -> None:
    responses = openapi["paths"]["/healthz"]["get"]["responses"]
    assert json_schema(responses["200"]) == {"$ref": "#/components/schemas/HealthReport"}
    assert json_schema(responses["503"]) == {"$ref": "#/components/schemas/HealthUnavailable"}
    unavailable = component(openapi, "#/components/schemas/HealthUnavailable")
    assert {"error", "detail", "checks"} <= set(unavailable["required"])


# -- the answers are their models ----------------------------------------------------------
class Recorder:
    """Records what the wrapped document functions returned, before FastAPI filters it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.documents: dict[str, list[Any]] = {}

    def wrap(self, owner: object, name: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)
        seen = self.documents.setdefault(name, [])

        def recorded(*args: Any, **kwargs: Any) -> Any:
            document = original(*args, **kwargs)
            seen.append(document)
            return document

        self.monkeypatch.setattr(owner, name, recorded)

    def last(self, name: str) -> Any:
        assert self.documents.get(name), f"{name} was not called"
        return self.documents[name][-1]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder(monkeypatch)
    recorder.wrap(registry, "describe")
    recorder.wrap(api, "explain_bytes")
    for name in ("where_document", "summary_document", "queue_document", "stats_document",
                 "take_upload"):
        recorder.wrap(api_ledger, name)
    return recorder


def ordered(document: Any) -> str:
    """A document as JSON text, key order included."""
    return json.dumps(document)


def assert_answer(kit: WebKit, method: str, path: str, response: Any,
                  built: Any = None, status: int = 200) -> Any:
    """The answer is its declared model's round trip, and (given ``built``) exactly the
    document the route built."""
    assert response.status_code == status, response.text
    body = response.json()
    adapter: TypeAdapter[Any] = TypeAdapter(MODELS[method.lower(), path])
    assert ordered(adapter.dump_python(adapter.validate_python(body), mode="json")) == (
        ordered(body))
    if built is not None:
        assert ordered(body) == ordered(built)
    return body


def some_deliveries(kit: WebKit) -> int:
    """Delivered, failed and waiting deliveries, and live status for ORTHANC1; returns the
    id of the failed one."""
    ledger = kit.ledger
    failed = ingest_to(ledger, ["ORTHANC1"], ["ORTHANC-PROBE"], study_instance_uid="1.2.1",
                       patient_id="P1", accession_number="A1")
    rows = delivery_rows(ledger, failed)
    ledger.queue.record_outcomes([
        DeliveryOutcome(rows["ORTHANC1"][0], DeliveryState.DELIVERED),
        DeliveryOutcome(rows["ORTHANC-PROBE"][0], DeliveryState.FAILED, "0xA700 refused")])
    ingest_to(ledger, ["ORTHANC2"], study_instance_uid="1.2.2")
    ledger.status_board.publish([PublishedStatus("ORTHANC1", "up", "closed", None,
                                                 "a past error", 3)])
    return int(rows["ORTHANC-PROBE"][0])


def row_named(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["name"] == name)


def test_endpoint_answers_are_their_models(kit: WebKit, recorder: Recorder) -> None:
    some_deliveries(kit)
    client = kit.client
    listed = assert_answer(kit, "GET", "/api/endpoints", client.get("/api/endpoints",
                                                                       headers=AUTH),
                           recorder.last("describe"))
    one = row_named(listed, "ORTHANC1")
    assert (one["health"], one["breaker"], one["load"], one["last_error"]) == (
        "up", "closed", 3, "a past error")
    assert row_named(listed, "ORTHANC2")["url"] is None

    added = client.post("/api/endpoints", headers=AUTH, json={
        "name": "ORTHANC3", "aet": "ORTHANC3", "host": "h", "port": 5, "weight": 2,
        "url": "http://h:8042", "kind": "orthanc-rest", "groups": ["storage"]})
    assert_answer(kit, "POST", "/api/endpoints", added,
                  row_named(recorder.last("describe"), "ORTHANC3"), status=201)

    changed = client.patch("/api/endpoints/ORTHANC3", headers=AUTH, json={"state": "draining"})
    assert_answer(kit, "PATCH", "/api/endpoints/{name}", changed,
                  row_named(recorder.last("describe"), "ORTHANC3"))

    removed = client.delete("/api/endpoints/ORTHANC3", headers=AUTH)
    assert_answer(kit, "DELETE", "/api/endpoints/{name}", removed,
                  {"removed": "ORTHANC3", "redirected": 0, "target": None})
    forced = client.delete("/api/endpoints/ORTHANC2", params={"force": "true"}, headers=AUTH)
    assert_answer(kit, "DELETE", "/api/endpoints/{name}", forced,
                  {"removed": "ORTHANC2", "redirected": 1, "target": "ORTHANC1"})


def test_rules_answers_are_their_models(kit: WebKit) -> None:
    client = kit.client
    default = client.get("/api/rules", headers=AUTH)
    assert assert_answer(kit, "GET", "/api/rules", default)["default"] is True
    applied = client.put("/api/rules", content=RULES,
                         headers={**AUTH, "content-type": "application/yaml"})
    assert_answer(kit, "PUT", "/api/rules", applied,
                  {"applied": 2, "rules": ["no-sr", "ct"], "mirror": ["ORTHANC-PROBE"]})
    assert_answer(kit, "GET", "/api/rules", client.get("/api/rules", headers=AUTH),
                  {"text": RULES, "default": False, "rules": ["no-sr", "ct"],
                   "mirror": ["ORTHANC-PROBE"]})


@pytest.mark.parametrize(("modality", "shape"), [
    ("CT", "routed"), ("SR", "discarded"), ("MR", "refused")])
def test_each_explain_shape_is_its_model(kit: WebKit, recorder: Recorder, modality: str,
                                         shape: str) -> None:
    kit.services.home.rules_file.write_text(RULES)
    ds = dcmread(bundled_file("CT_small.dcm"))
    ds.Modality = modality
    buffer = io.BytesIO()
    ds.save_as(buffer)
    response = kit.client.post("/api/route/explain", headers=AUTH,
                               files={"file": ("x.dcm", buffer.getvalue())})
    decision = assert_answer(kit, "POST", "/api/route/explain", response,
                             recorder.last("explain_bytes"))
    assert ("refused" in decision, decision.get("discard")) == {
        "routed": (False, False), "discarded": (False, True), "refused": (True, None)}[shape]


def test_upload_answers_are_their_model(kit: WebKit, recorder: Recorder) -> None:
    good, _ = dicom_bytes()
    ds = dcmread(bundled_file("CT_small.dcm"))
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"  # refused: differs from the dataset
    mismatch = io.BytesIO()
    ds.save_as(mismatch)
    archive = zip_of({"DICOMDIR": bundled_file("DICOMDIR").read_bytes(), "IM1": good})
    response = kit.client.post("/api/instances", headers=AUTH, files=[
        ("file", ("cd.zip", archive)), ("file", ("mismatch.dcm", mismatch.getvalue()))])

    document = assert_answer(kit, "POST", "/api/instances", response,
                             recorder.last("take_upload"))
    assert [f["status"] for f in document["files"]] == ["skipped", "stored", "refused"]


def test_ledger_answers_are_their_models(kit: WebKit, recorder: Recorder) -> None:
    failed = some_deliveries(kit)
    client = kit.client
    (uid,) = [i.sop_instance_uid for i in kit.ledger.diagnostics.instances() if i.id == 1]

    where = client.get(f"/api/instances/{uid}", headers=AUTH)
    document = assert_answer(kit, "GET", "/api/instances/{sop_instance_uid}", where,
                             recorder.last("where_document"))
    assert {d["state"] for d in document["deliveries"]} == {"delivered", "failed"}

    found = client.get("/api/instances", params={"patient_id": "P1"}, headers=AUTH)
    assert_answer(kit, "GET", "/api/instances", found, {
        "total": 1, "limit": 50, "offset": 0,
        "instances": recorder.documents["summary_document"][-1:]})
    everything = client.get("/api/instances", headers=AUTH)
    assert len(assert_answer(kit, "GET", "/api/instances", everything)["instances"]) == 2

    queue = client.get("/api/queue", headers=AUTH)
    document = assert_answer(kit, "GET", "/api/queue", queue, recorder.last("queue_document"))
    assert len(document["deliveries"]) == 2

    retried = client.post(f"/api/deliveries/{failed}/retry", headers=AUTH)
    assert_answer(kit, "POST", "/api/deliveries/{delivery_id}/retry", retried,
                  {"id": failed, "previous": "failed", "state": "pending"})
    requeued = client.post("/api/queue/retry-failed", headers=AUTH)
    assert_answer(kit, "POST", "/api/queue/retry-failed", requeued, {"requeued": 0})


def test_stats_answer_is_its_model(kit: WebKit, recorder: Recorder) -> None:
    some_deliveries(kit)
    response = kit.client.get("/api/stats", params={"minutes": 3}, headers=AUTH)
    document = assert_answer(kit, "GET", "/api/stats", response,
                             recorder.last("stats_document"))
    ages = {e["name"]: e["oldest_queued_age_seconds"] for e in document["endpoints"]}
    assert ages["ORTHANC1"] is None and isinstance(ages["ORTHANC2"], float)


def test_healthz_answers_are_their_models(kit: WebKit) -> None:
    assert_answer(kit, "GET", "/healthz", kit.client.get("/healthz"))
    kit.services.receiver.running = False
    response = kit.client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert HealthUnavailable.model_validate(body).model_dump(mode="json") == body


def test_login_and_logout_answers_are_their_models(kit: WebKit) -> None:
    session = assert_answer(kit, "POST", "/login",
                            kit.client.post("/login", json={"token": TOKEN}))
    assert_answer(kit, "POST", "/logout", kit.client.post(
        "/logout", headers={"X-CSRF-Token": session["csrf_token"]}))


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("get", "/api/instances/1.2.3", {}),
    ("post", "/api/endpoints", {"json": {"name": "N"}}),
    ("put", "/api/rules", {"content": "rules: [", "headers": {"content-type": "text/plain"}}),
    ("post", "/api/instances", {"files": {"file": ("x.txt", b"not dicom")}}),
])
def test_error_answers_are_the_error_model(kit: WebKit, method: str, path: str,
                                           kwargs: dict[str, Any]) -> None:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    response = kit.client.request(method, path, headers=headers, **kwargs)
    assert response.status_code >= 400
    body = response.json()
    assert ErrorBody.model_validate(body).model_dump(mode="json", exclude_unset=True) == body
