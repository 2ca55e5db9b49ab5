"""``GET /api/stats``: per endpoint health, load, queue and throughput; received per minute.

Per-minute series cover the last ``minutes`` whole minutes up to the current one (oldest
first), counted from the ledger (``received_at`` of instances, ``delivered_at`` of
deliveries), so they survive restarts and agree with ``dde where``. Received counts what
senders sent: the copies ``dde reconcile --repair`` queued again are not counted.
"""

from __future__ import annotations

import time
from typing import Any

from dde.config import Settings
from dde.endpoints import registry
from dde.reconcile import RECONCILE_AET
from dde.reports import iso
from dde.web.services import WebServices


def stats_document(services: WebServices, settings: Settings, minutes: int = 15,
                   now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    current = int(now // 60)
    buckets = list(range(current - minutes + 1, current + 1))
    since = float(buckets[0] * 60)
    ledger = services.ledger
    rows = registry.describe(settings, ledger)
    queues = ledger.operators.queue_summary()
    delivered = ledger.operators.delivered_per_minute(since)
    received = ledger.operators.received_per_minute(since, exclude_called=(RECONCILE_AET,))
    endpoints = []
    for row in rows:
        queue = queues.get(row["name"])
        oldest = queue.oldest_created_at if queue is not None else None
        series = delivered.get(row["name"], {})
        per_minute = [series.get(b, 0) for b in buckets]
        endpoints.append({
            "name": row["name"], "state": row["state"], "groups": row["groups"],
            "health": row["health"], "breaker": row["breaker"], "load": row["load"],
            "last_error": row["last_error"],
            "queued": row["queued"],
            "oldest_queued_age_seconds": round(max(0.0, now - oldest), 3)
            if oldest is not None else None,
            "delivered": row["delivered"], "failed": row["failed"],
            "delivered_per_minute": per_minute,
            "delivered_last_minutes": sum(per_minute),
        })
    return {
        "generated_at": iso(now),
        "minutes": [iso(b * 60) for b in buckets],
        "received_per_minute": [received.get(b, 0) for b in buckets],
        "endpoints": endpoints,
    }
