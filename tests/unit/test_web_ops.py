"""``/healthz``, ``/metrics`` and the counters fed by the receive and delivery paths."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.unitkit import (
    FakeSender,
    delivery_rows,
    endpoint,
    generated,
    ingest_to,
    load_book,
)
from tests.support.webkit import AUTH, WebKit, dicom_bytes, make_webkit, metric_value

from dde.delivery.dispatcher import EndpointWorker
from dde.delivery.retry import RetryPolicy
from dde.endpoints.sending import SendResult
from dde.receiving.ingest import IngestPipeline
from dde.store.commitments import CommitmentItem, NewCommitment
from dde.store.diagnostics import backend_error
from dde.store.records import DeliveryOutcome
from dde.store.spool import encode_file_meta
from dde.store.states import DeliveryState
from dde.telemetry import Telemetry


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


def scrape(kit: WebKit) -> str:
    response = kit.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# -- /healthz ------------------------------------------------------------------------------
def test_healthz_is_ok_when_ready(kit: WebKit) -> None:
    response = kit.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {
        "database": {"ok": True}, "spool": {"ok": True}, "receiver": {"ok": True}}}
    assert kit.spool_files() == []  # the probe file is gone


def test_healthz_is_503_when_the_spool_is_not_writable(kit: WebKit) -> None:
    root = kit.services.spool.root
    shutil.rmtree(root)
    root.write_text("a file where the spool folder should be")

    response = kit.client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["error"] == "unavailable"
    assert body["checks"]["spool"]["ok"] is False
    assert "not writable" in body["detail"] and str(root) not in response.text
    assert body["checks"]["database"] == {"ok": True}


def test_healthz_is_503_when_the_receiver_is_down(kit: WebKit) -> None:
    kit.services.receiver.running = False
    response = kit.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["receiver"] == {
        "ok": False, "detail": "the DICOM receiver is not listening"}


def test_healthz_is_503_when_the_ledger_fails(kit: WebKit,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing:
        def execute(self, *args: Any) -> Any:
            raise backend_error("disk I/O error")

    monkeypatch.setattr(kit.ledger.database, "connection", lambda *args: Failing())
    response = kit.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"]["ok"] is False


# -- /metrics ------------------------------------------------------------------------------
def test_metrics_count_received_instances_and_bytes(kit: WebKit) -> None:
    before = scrape(kit)
    assert metric_value(before, "dde_received_instances_total") == 0
    assert metric_value(before, "dde_delivered_total", 'endpoint="ORTHANC1"') == 0
    raw, _ = dicom_bytes(study_uid="1.2.826.0.1.3680043.10.7")
    files = [("a.dcm", raw), ("b.dcm", dicom_bytes(study_uid="1.2.826.0.1.3680043.10.7")[0])]
    response = kit.client.post("/api/instances", headers=AUTH,
                               files=[("file", f) for f in files])
    assert response.status_code == 200

    text = scrape(kit)

    datasets = sum(len(r) - len(r.split(b"DICM", 1)[0]) for _, r in files)
    assert metric_value(text, "dde_received_instances_total") == 2
    assert 0 < metric_value(text, "dde_received_bytes_total") < datasets
    assert metric_value(text, "dde_ack_latency_seconds_count") == 2
    assert metric_value(text, "dde_ack_latency_seconds_bucket", 'le="+Inf"') == 2
    assert metric_value(text, "dde_queued_deliveries", 'endpoint="ORTHANC-PROBE"') == 2
    assert sorted(metric_value(text, "dde_queued_deliveries", f'endpoint="{name}"')
                  for name in ("ORTHANC1", "ORTHANC2")) == [0, 2]  # one study, one PACS
    assert metric_value(text, "dde_oldest_queued_age_seconds", 'endpoint="ORTHANC-PROBE"') > 0
    assert metric_value(text, "dde_refused_instances_total", 'reason="no_route"') == 0


def test_metrics_show_breaker_health_and_failed_deliveries(kit: WebKit) -> None:
    kit.services.health.states.update({
        "ORTHANC1": {"health": "up", "breaker": "closed"},
        "ORTHANC2": {"health": "down", "breaker": "open"},
    })
    kit.client.post("/api/instances", headers=AUTH, files={"file": ("a", dicom_bytes()[0])})
    (instance,) = kit.ledger.diagnostics.instances()
    probe = delivery_rows(kit.ledger, instance.id)["ORTHANC-PROBE"][0]
    kit.ledger.queue.record_outcomes([DeliveryOutcome(probe, DeliveryState.FAILED, "refused")])

    text = scrape(kit)

    assert metric_value(text, "dde_endpoint_up", 'endpoint="ORTHANC1"') == 1
    assert metric_value(text, "dde_endpoint_up", 'endpoint="ORTHANC2"') == 0
    assert metric_value(text, "dde_endpoint_up", 'endpoint="ORTHANC-PROBE"') == 0  # unknown
    assert metric_value(text, "dde_breaker_open", 'endpoint="ORTHANC2"') == 1
    assert metric_value(text, "dde_breaker_open", 'endpoint="ORTHANC1"') == 0
    assert metric_value(text, "dde_failed_deliveries", 'endpoint="ORTHANC-PROBE"') == 1


def test_every_metric_name_starts_with_dde(kit: WebKit) -> None:
    names = {line.split()[2] for line in scrape(kit).splitlines() if line.startswith("# TYPE")}
    assert names and all(name.startswith("dde_") for name in names), names
    assert {"dde_received_instances_total", "dde_received_bytes_total",
            "dde_ack_latency_seconds", "dde_refused_instances_total", "dde_queued_deliveries",
            "dde_oldest_queued_age_seconds", "dde_delivered_total",
            "dde_delivery_failed_total", "dde_delivery_latency_seconds",
            "dde_breaker_open", "dde_endpoint_up"} <= names


def test_the_dispatcher_counts_deliveries_and_failures(kit: WebKit) -> None:
    ledger, spool = kit.ledger, kit.services.spool
    ids = []
    for _ in range(3):
        instance = generated()
        written = spool.write(encode_file_meta(instance.sop_class_uid,
                                               instance.sop_instance_uid,
                                               instance.transfer_syntax_uid), instance.dataset)
        ids.append(ingest_to(ledger, ["ORTHANC1"], spool_path=written.relative_path,
                             sop_instance_uid=instance.sop_instance_uid))
    answers = iter([SendResult.delivered("ok"), SendResult.delivered("ok"),
                    SendResult.refused("0x0122 not supported", permanent=True)])
    worker = EndpointWorker(endpoint("ORTHANC1"), ledger, spool,
                            FakeSender(lambda shipment: next(answers)),
                            RetryPolicy(max_attempts=1, base=1.0, cap=1.0), load_book(),
                            batch_size=10, idle_release=0, poll=1, telemetry=kit.metrics)

    assert worker._one_batch()

    text = scrape(kit)
    assert metric_value(text, "dde_delivered_total", 'endpoint="ORTHANC1"') == 2
    assert metric_value(text, "dde_delivery_failed_total", 'endpoint="ORTHANC1"') == 1
    assert metric_value(text, "dde_delivery_latency_seconds_count",
                        'endpoint="ORTHANC1"') == 2
    assert metric_value(text, "dde_delivered_total", 'endpoint="ORTHANC2"') == 0


def test_a_failing_telemetry_never_changes_the_answer(kit: WebKit) -> None:
    class Broken(Telemetry):
        def instance_received(self, size: int, ack_seconds: float) -> None:
            raise RuntimeError("metrics backend down")

    services = kit.services
    pipeline = IngestPipeline(services.ledger, services.spool, services.router,
                              services.dispatcher.wake, Broken())
    result = pipeline.ingest(generated().incoming())
    assert result.ok and kit.instance_count() == 1


def test_ack_latency_starts_at_the_handler_entry(kit: WebKit) -> None:
    seen: list[float] = []

    class Recording(Telemetry):
        def instance_received(self, size: int, ack_seconds: float) -> None:
            seen.append(ack_seconds)

    services = kit.services
    pipeline = IngestPipeline(services.ledger, services.spool, services.router,
                              services.dispatcher.wake, Recording())
    pipeline.ingest(generated().incoming(started=time.monotonic() - 5.0))
    assert len(seen) == 1 and 5.0 <= seen[0] < 60.0


def test_metrics_count_commitments_per_state(kit: WebKit) -> None:
    kit.client.post("/api/instances", headers=AUTH, files={"file": ("a", dicom_bytes()[0])})
    (instance,) = kit.ledger.diagnostics.instances()
    probe = delivery_rows(kit.ledger, instance.id)["ORTHANC-PROBE"][0]
    kit.ledger.queue.record_outcomes(
        [DeliveryOutcome(probe, DeliveryState.DELIVERED)],
        commitments=[NewCommitment("2.25.7", "ORTHANC-PROBE", (CommitmentItem(
            probe, instance.sop_class_uid, instance.sop_instance_uid),))])

    text = scrape(kit)

    labels = 'endpoint="ORTHANC-PROBE",state="{}"'
    assert metric_value(text, "dde_commitments", labels.format("pending")) == 1
    assert metric_value(text, "dde_commitments", labels.format("committed")) == 0
    assert "dde_commitments{endpoint=\"ORTHANC1\"" not in text  # no commitment asked of it
