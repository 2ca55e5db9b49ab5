"""The HTTP side of a running router against real Orthanc: upload over HTTP, delivery to a
storage PACS and the probe with the bytes as uploaded, the ledger, metrics and stats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from tests.support.datagen import write_series
from tests.support.fixtures import ReferenceStack
from tests.support.orthanc import storescu, wait_until
from tests.support.router import ROUTER_AET
from tests.support.unitkit import split_part10
from tests.support.webkit import metric_value

from dde.web.auth import load_token

pytestmark = pytest.mark.integration


@pytest.fixture
def api(reference_stack: ReferenceStack) -> Iterator[httpx.Client]:
    router = reference_stack.router
    token = load_token(router.home, create=False)
    with httpx.Client(base_url=router.web_url, trust_env=False, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_upload_over_http_is_delivered_and_visible_everywhere(
        reference_stack: ReferenceStack, api: httpx.Client, tmp_path: Path) -> None:
    stack = reference_stack
    assert api.get("/healthz").json()["status"] == "ok"
    files = write_series(tmp_path / "upload", 2, patient_id="WEB-LIVE-1")
    uids = [uid_of(f) for f in files]

    response = api.post("/api/instances",
                        files=[("file", (f.name, f.read_bytes())) for f in files])

    assert response.status_code == 200, response.text
    results = response.json()["files"]
    assert [(r["name"], r["status"], r["sop_instance_uid"]) for r in results] == [
        (files[0].name, "stored", uids[0]), (files[1].name, "stored", uids[1])]
    stack.router.wait_idle()
    stack.probe.wait_for_sop_instance_uids(uids)
    holders = [s for s in stack.storages if set(uids) <= s.sop_instance_uids()]
    assert len(holders) == 1, "one study goes to one storage PACS"
    for path, uid in zip(files, uids, strict=True):
        uploaded = split_part10(path.read_bytes())[1]
        assert split_part10(holders[0].file_bytes(uid))[1] == uploaded
        assert split_part10(stack.probe.file_bytes(uid))[1] == uploaded

    where = api.get(f"/api/instances/{uids[0]}").json()
    assert where["calling_aet"] == "WEB_UPLOAD" and where["called_aet"] == ROUTER_AET
    assert sorted((d["endpoint"], d["state"]) for d in where["deliveries"]) == sorted(
        [(holders[0].name, "delivered"), (stack.probe.name, "delivered")])
    found = api.get("/api/instances", params={"patient_id": "WEB-LIVE-1"}).json()
    assert found["total"] == 2
    assert {i["sop_instance_uid"] for i in found["instances"]} == set(uids)

    metrics = httpx.get(f"{stack.router.web_url}/metrics", trust_env=False).text
    assert metric_value(metrics, "dde_received_instances_total") == 2
    assert metric_value(metrics, "dde_received_bytes_total") > 2 * 64 * 64 * 2
    assert metric_value(metrics, "dde_ack_latency_seconds_count") == 2
    assert metric_value(metrics, "dde_delivered_total",
                        f'endpoint="{stack.probe.name}"') == 2
    assert metric_value(metrics, "dde_delivered_total", f'endpoint="{holders[0].name}"') == 2
    assert metric_value(metrics, "dde_delivery_latency_seconds_count",
                        f'endpoint="{stack.probe.name}"') == 2
    assert metric_value(metrics, "dde_queued_deliveries", f'endpoint="{stack.probe.name}"') == 0

    def endpoint_stats() -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in api.get("/api/stats").json()["endpoints"]}

    stats = endpoint_stats()
    assert stats[stack.probe.name]["delivered"] == 2
    assert stats[stack.probe.name]["delivered_last_minutes"] == 2
    assert stats[holders[0].name]["delivered"] == 2
    assert sum(stats[s.name]["delivered"] for s in stack.storages) == 2
    wait_until(lambda: endpoint_stats()[stack.probe.name]["health"] == "up", 15,
               "the probe published as up")


def test_c_store_and_upload_share_the_counters(reference_stack: ReferenceStack,
                                               api: httpx.Client, tmp_path: Path) -> None:
    stack = reference_stack
    sent = write_series(tmp_path / "dimse", 1)
    storescu(sent, stack.router.port, ROUTER_AET)
    uploaded = write_series(tmp_path / "http", 1)
    response = api.post("/api/instances", files={"file": ("x.dcm", uploaded[0].read_bytes())})
    assert response.status_code == 200 and response.json()["stored"] == 1

    metrics = httpx.get(f"{stack.router.web_url}/metrics", trust_env=False).text
    assert metric_value(metrics, "dde_received_instances_total") == 2
    assert api.get(f"/api/instances/{uid_of(sent[0])}").json()["calling_aet"] == "TEST_SCU"
    stack.router.wait_idle()
    stack.probe.wait_for_sop_instance_uids([uid_of(sent[0]), uid_of(uploaded[0])])


def test_a_refused_upload_stores_nothing_on_the_live_router(
        reference_stack: ReferenceStack, api: httpx.Client) -> None:
    response = api.post("/api/instances", files={"file": ("notes.txt", b"not an image")})

    assert response.status_code == 415
    assert response.json()["error"] == "not_dicom"
    assert api.get("/api/instances").json()["total"] == 0
    assert api.get("/api/endpoints", headers={"Authorization": "Bearer nope"}).status_code == 401
