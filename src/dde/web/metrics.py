"""Prometheus metrics of one router, in a registry of its own (names start with ``dde_``).

Events (received, refused, delivered, failed) are counted where they happen: the ingest
pipeline and the dispatcher call :class:`WebMetrics` as their :class:`Telemetry`. Levels
(queue depth, oldest queued age, breaker, health) are read at scrape time from the ledger
and the health monitor by :class:`StateCollector`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dde.store.errors import LedgerError
from dde.telemetry import Telemetry
from dde.web.services import WebServices

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series

ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    900.0, 3600.0)
REFUSAL_REASONS = ("broken_dataset", "no_sop_instance_uid", "uid_mismatch", "study_mismatch",
                   "spool_error", "spool_full", "no_route", "ledger_error", "internal_error")


class WebMetrics(Telemetry):
    """The counters and histograms; a :class:`Telemetry` for the receive/delivery paths."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("dde_received_instances",
                                "Instances acknowledged with success (C-STORE or upload).",
                                registry=r)
        self.received_bytes = Counter("dde_received_bytes",
                                      "Dataset bytes of the acknowledged instances.",
                                      registry=r)
        self.ack_latency = Histogram("dde_ack_latency_seconds",
                                     "From the request reaching the router to its status.",
                                     buckets=ACK_BUCKETS, registry=r)
        self.refused = Counter("dde_refused_instances",
                               "Instances answered with a failure status, by reason.",
                               ["reason"], registry=r)
        self.delivered = Counter("dde_delivered", "Deliveries completed, per endpoint.",
                                 ["endpoint"], registry=r)
        self.delivery_failed_total = Counter(
            "dde_delivery_failed", "Deliveries given up (failed state), per endpoint.",
            ["endpoint"], registry=r)
        self.delivery_latency = Histogram(
            "dde_delivery_latency_seconds", "From receipt to delivery, per endpoint.",
            ["endpoint"], buckets=DELIVERY_BUCKETS, registry=r)
        self.taken_over = Counter(
            "dde_lease_takeovers", "Deliveries claimed after another node's lease expired "
            "(that node died holding them): each may have been sent twice.", ["endpoint"],
            registry=r)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)

    # -- Telemetry -------------------------------------------------------------------------
    def instance_received(self, size: int, ack_seconds: float) -> None:
        self.received.inc()
        self.received_bytes.inc(size)
        self.ack_latency.observe(ack_seconds)

    def instance_refused(self, reason: str, ack_seconds: float) -> None:
        self.refused.labels(reason).inc()
        self.ack_latency.observe(ack_seconds)

    def delivery_succeeded(self, endpoint: str, latency_seconds: float | None) -> None:
        self.delivered.labels(endpoint).inc()
        if latency_seconds is not None:
            self.delivery_latency.labels(endpoint).observe(latency_seconds)

    def delivery_failed(self, endpoint: str) -> None:
        self.delivery_failed_total.labels(endpoint).inc()

    def deliveries_taken_over(self, endpoint: str, count: int) -> None:
        self.taken_over.labels(endpoint).inc(count)

    # -- exposition ------------------------------------------------------------------------
    def watch(self, services: WebServices) -> None:
        """Add the scrape-time levels read from ``services``."""
        self.registry.register(StateCollector(services))

    def exposition(self, endpoints: list[str]) -> bytes:
        for name in endpoints:  # every configured endpoint shows, at 0 before its first event
            self.delivered.labels(name)
            self.delivery_failed_total.labels(name)
            self.taken_over.labels(name)
        return generate_latest(self.registry)


class StateCollector(Collector):
    def __init__(self, services: WebServices) -> None:
        self._services = services

    def collect(self) -> Iterator[Metric]:
        names = [e.name for e in self._services.settings.endpoints]
        queued = GaugeMetricFamily("dde_queued_deliveries",
                                   "Deliveries waiting (pending), per endpoint.",
                                   labels=["endpoint"])
        oldest = GaugeMetricFamily("dde_oldest_queued_age_seconds",
                                   "Age of the oldest pending delivery (0: none), per endpoint.",
                                   labels=["endpoint"])
        failed = GaugeMetricFamily("dde_failed_deliveries",
                                   "Deliveries in the failed state (to retry), per endpoint.",
                                   labels=["endpoint"])
        breaker = GaugeMetricFamily("dde_breaker_open",
                                    "1 while the endpoint's circuit breaker is open.",
                                    labels=["endpoint"])
        up = GaugeMetricFamily("dde_endpoint_up",
                               "1 when the endpoint answers its health probe, else 0.",
                               labels=["endpoint"])
        commitments = GaugeMetricFamily(
            "dde_commitments", "Storage commitment transactions in the ledger, per endpoint "
            "and state (pending, committed, failed); read from the ledger, so reports taken "
            "by any receiver process count.", labels=["endpoint", "state"])
        now = time.time()
        try:
            summary = self._services.ledger.operators.queue_summary()
            counts = self._services.ledger.operators.state_counts()
            committing = self._services.ledger.commitments.counts()
        except LedgerError as exc:
            log.warning("metrics: ledger not readable: %s", exc)
            summary, counts, committing = {}, {}, {}
        for endpoint in self._services.settings.endpoints:
            if endpoint.storage_commitment or endpoint.name in committing:
                for kind in ("pending", "committed", "failed"):
                    commitments.add_metric([endpoint.name, kind],
                                           committing.get(endpoint.name, {}).get(kind, 0))
        health = self._services.health.snapshot()
        for name in names:
            entry = summary.get(name)
            queued.add_metric([name], entry.pending if entry else 0)
            oldest.add_metric([name], max(0.0, now - entry.oldest_created_at)
                              if entry and entry.oldest_created_at is not None else 0.0)
            failed.add_metric([name], counts.get(name, {}).get("failed", 0))
            state = health.get(name, {})
            breaker.add_metric([name], 0 if state.get("breaker", "closed") == "closed" else 1)
            up.add_metric([name], 1 if state.get("health") == "up" else 0)
        yield from (queued, oldest, failed, breaker, up, commitments)
        spool = self._services.spool
        yield GaugeMetricFamily("dde_spool_bytes",
                                "Bytes of received instances held in the spool.",
                                value=spool.used_bytes_cached)
        yield GaugeMetricFamily("dde_spool_max_bytes",
                                "The spool's cap (spool.max_bytes; 0: no cap).",
                                value=spool.max_bytes)
