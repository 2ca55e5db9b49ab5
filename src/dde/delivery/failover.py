"""Failover: the undelivered rest of a study pinned to an endpoint that has been down longer
than ``failover_after_seconds`` moves to another member of its group, chosen by the group's
strategy (invariant 5).

New instances of such a study are re-pinned by the router itself (the endpoint is "lost"
to it); this moves what was already queued. Every move is an event in the ledger.
"""

from __future__ import annotations

import logging

from dde.endpoints.health import HealthMonitor
from dde.routing.router import Router
from dde.store.ledger import Ledger

log = logging.getLogger(__name__)


def fail_over_once(ledger: Ledger, health: HealthMonitor, router: Router) -> int:
    """Move the pending rest of every study pinned to a failed-over endpoint. Returns moves."""
    moved = 0
    lost = health.failed_over()
    for source in sorted(lost):
        studies = ledger.moves.pinned_studies_with_pending(source)
        if not studies:
            continue
        queued = ledger.queue.queued_counts()
        for study, group in studies:
            target = router.choose_target(group, queued, exclude=lost)
            if target is None:
                log.warning("%s is down past failover but no other member of %s is "
                            "available; its studies wait", source, group)
                break
            count = ledger.moves.move_study(study, source, target,
                                            f"{source} down longer than failover_after")
            queued[target] = queued.get(target, 0) + count
            queued[source] = max(0, queued.get(source, 0) - count)
            moved += count
        if moved:
            log.warning("failover: moved %d pending deliveries of %d studies from %s",
                        moved, len(studies), source)
    return moved
