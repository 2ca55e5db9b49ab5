"""Endpoint health and load as the main process publishes them, for receiver processes.

The main process probes every endpoint and polls the loads; it writes the picture to the
ledger (``endpoint_status``) every second. A receiver process routes with that picture: it
implements the router's ``HealthView`` and ``LoadView`` by reading the table, at most once
per ``max_age`` seconds; deliveries recorded since the publication count in the load
at once. An endpoint the table does not mention yet counts as up, with no
load (the same as the main process before its first probe).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dde.delivery.ledger import Ledger


@dataclass(frozen=True)
class _Status:
    down: bool
    down_since: float | None
    stored: int


class PublishedEndpoints:
    def __init__(self, ledger: Ledger, failover_after: float, max_age: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        self._ledger = ledger
        self.failover_after = failover_after
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._status: dict[str, _Status] = {}

    def _current(self) -> dict[str, _Status]:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at >= self._max_age:
                rows = self._ledger.endpoint_status()
                published_at = min((float(r["updated_at"]) for r in rows.values()),
                                   default=None)
                since = ({} if published_at is None
                         else self._ledger.delivered_since(published_at))
                self._status = {name: _parse(row, since.get(name, 0))
                                for name, row in rows.items()}
                self._read_at = now
            return self._status

    def expire(self) -> None:
        """Read the table again at the next question."""
        with self._lock:
            self._read_at = float("-inf")

    def is_down(self, name: str) -> bool:
        status = self._current().get(name)
        return status is not None and status.down

    def failed_over(self) -> set[str]:
        now = self._clock()
        return {name for name, status in self._current().items()
                if status.down and status.down_since is not None
                and now - status.down_since >= self.failover_after}

    def stored(self, name: str) -> int:
        status = self._current().get(name)
        return 0 if status is None else status.stored


def _parse(row: dict[str, Any], delivered_since: int) -> _Status:
    load = row.get("load")
    down_since = row.get("down_since")
    return _Status(down=row.get("health") == "down",
                   down_since=float(down_since) if down_since is not None else None,
                   stored=(int(load) if isinstance(load, int) else 0) + delivered_since)
