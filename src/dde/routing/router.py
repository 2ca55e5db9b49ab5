"""The router: turns a header and the live endpoint picture into a ledger route.

It joins the pure decision (:mod:`dde.routing.decision`) with what only the running router
knows: the configured endpoints, their cached load, and — inside the ingest transaction —
the study pins and queue depths.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from dde.config import EndpointSettings, RoutingSettings
from dde.delivery.ledger import IngestView, Route
from dde.endpoints.load import LoadBook
from dde.receiving.header import InstanceHeader
from dde.routing.decision import Candidate, NoRoute, decide_storage


class Router:
    def __init__(self, routing: RoutingSettings, endpoints: Sequence[EndpointSettings],
                 loads: LoadBook) -> None:
        self._lock = threading.Lock()
        self._routing = routing
        self._endpoints = list(endpoints)
        self._loads = loads

    def configure(self, routing: RoutingSettings, endpoints: Sequence[EndpointSettings]) -> None:
        with self._lock:
            self._routing = routing
            self._endpoints = list(endpoints)

    def candidates(self, queued: dict[str, int]) -> tuple[str, list[Candidate]]:
        with self._lock:
            group = self._routing.group
            members = [e for e in self._endpoints if group in e.groups]
        return group, [
            Candidate(e.name, self._loads.stored(e.name) + queued.get(e.name, 0),
                      available=True, weight=e.weight)
            for e in members
        ]

    def mirrors(self) -> tuple[str, ...]:
        with self._lock:
            names = {e.name for e in self._endpoints}
            return tuple(m for m in self._routing.mirror if m in names)

    def route(self, header: InstanceHeader, view: IngestView) -> Route:
        """Decide inside the ingest transaction. Raises :class:`NoRoute`."""
        study = header.study_instance_uid
        pinned = view.pin_for(study) if study else None
        group, candidates = self.candidates(view.queued_counts() if pinned is None else {})
        if pinned is not None and pinned not in {c.name for c in candidates}:
            group, candidates = self.candidates(view.queued_counts())
        decision = decide_storage(study, pinned, group, candidates)
        mirrors = tuple(m for m in self.mirrors() if m != decision.destination)
        pin = (study, decision.destination, group) if decision.new_pin and study else None
        return Route(decision.rule, (decision.destination,), mirrors, pin)


__all__ = ["NoRoute", "Router"]
