"""Issue item 17: "received" on the dashboard counts what senders sent (not the copies
``dde reconcile --repair`` queued again), the endpoints page shows each endpoint's load and
URL, and ``GET /api/instances`` refuses a query parameter it does not know."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from tests.support.webkit import AUTH, ROUTER_AET, TOKEN, WebKit, dicom_bytes, make_webkit

from dde.dicom.part10 import split_part10
from dde.receiving.ingest import Incoming
from dde.reconcile import RECONCILE_AET
from dde.store.status_board import PublishedStatus
from dde.web.api_ledger import SEARCH_PARAMETERS


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


def receive(kit: WebKit, called_aet: str) -> str:
    data, uid = dicom_bytes()
    file = split_part10(data)
    result = kit.services.pipeline.ingest(Incoming(
        dataset=file.dataset, transfer_syntax_uid=file.transfer_syntax_uid,
        sop_class_uid=file.sop_class_uid, sop_instance_uid=file.sop_instance_uid,
        calling_aet="CT1", called_aet=called_aet, source_ip=None, started=time.monotonic()))
    assert result.ok, result.detail
    return uid


def log_in(kit: WebKit) -> None:
    assert kit.client.post("/login", json={"token": TOKEN}).status_code == 200


def test_reconcile_repairs_are_not_counted_as_received(kit: WebKit) -> None:
    receive(kit, ROUTER_AET)
    receive(kit, ROUTER_AET)
    for _ in range(3):
        receive(kit, RECONCILE_AET)
    assert kit.instance_count() == 5

    stats = kit.client.get("/api/stats", headers=AUTH).json()
    assert sum(stats["received_per_minute"]) == 2

    log_in(kit)
    page = kit.client.get("/").text
    total = re.search(r'id="received-total">(\d+)<', page)
    assert total is not None and total.group(1) == "2"


def test_the_store_excludes_the_called_aets_it_is_given(kit: WebKit) -> None:
    receive(kit, ROUTER_AET)
    receive(kit, RECONCILE_AET)
    operators = kit.ledger.operators
    assert sum(operators.received_per_minute(0).values()) == 2
    assert sum(operators.received_per_minute(0, exclude_called=(RECONCILE_AET,)).values()) == 1
    assert sum(operators.received_per_minute(
        0, exclude_called=(RECONCILE_AET, ROUTER_AET)).values()) == 0


def test_the_endpoints_page_shows_load_and_url(tmp_path: Path) -> None:
    from tests.support.webkit import default_settings

    settings = default_settings(endpoints=[
        {"name": "ORTHANC1", "aet": "ORTHANC1", "port": 4242, "groups": ["storage"],
         "url": "http://pacs-one.example:8042"},
        {"name": "ORTHANC-PROBE", "aet": "ORTHANC-PROBE", "port": 4244, "groups": ["probe"]}])
    kit = make_webkit(tmp_path, settings)
    kit.ledger.status_board.publish([PublishedStatus("ORTHANC1", "up", "closed", None, None,
                                                     1234)])
    log_in(kit)
    page = kit.client.get("/endpoints").text
    headers = re.findall(r"<th>([^<]*)</th>", page)
    assert "Load" in headers and "URL" in headers
    row = page[page.index('data-endpoint="ORTHANC1"'):]
    row = row[:row.index("</tr>")]
    assert '<td class="num" data-field="load" title="Instances stored on it">1234</td>' in row
    assert ">http://pacs-one.example:8042</td>" in row
    probe = page[page.index('data-endpoint="ORTHANC-PROBE"'):]
    probe = probe[:probe.index("</tr>")]
    assert 'data-field="url">—</td>' in probe and 'title="Instances stored on it">—</td>' in probe
    # the rows the script draws have the same cells
    template = page[page.index('<template id="row-template">'):]
    assert 'data-field="load"' in template and 'data-field="url"' in template


@pytest.mark.parametrize("query", [{"patientid": "P1"}, {"patient": "P1"},
                                   {"patient_id": "P1", "sort": "name"}])
def test_an_unknown_search_parameter_is_400_json(kit: WebKit, query: dict[str, str]) -> None:
    response = kit.client.get("/api/instances", params=query, headers=AUTH)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "bad_request"
    unknown = sorted(set(query) - set(SEARCH_PARAMETERS))
    assert f"unknown query parameter: {', '.join(unknown)}" in body["detail"]


def test_the_known_search_parameters_still_work(kit: WebKit) -> None:
    response = kit.client.get("/api/instances", headers=AUTH, params={
        "patient_id": "P1", "accession": "A1", "study_uid": "1.2", "since": "0",
        "limit": "5", "offset": "0"})
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 0
