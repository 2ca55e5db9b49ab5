"""Endpoint health and load as the running router publishes them, as a router's
``HealthView`` and ``LoadView``.

The main process probes every endpoint and polls the loads; it publishes the picture on
the ledger's status board (:mod:`dde.store.status_board`). Receiver processes route with
it, and ``dde route explain`` explains with it: both read it here, through the board's one
reader, so they cannot disagree. The board is read at most once per ``max_age`` seconds.
An endpoint the board does not show (not published yet, or stale) or shows as ``unknown``
is unknown, with no load — the same as in the main process before its first probe: it gets
new studies only while no member of its group is known up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dde.store.status_board import EndpointStatus, EndpointStatusBoard


class PublishedEndpoints:
    def __init__(self, board: EndpointStatusBoard, failover_after: float,
                 max_age: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self._board = board
        self.failover_after = failover_after
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._status: dict[str, EndpointStatus] = {}

    def _current(self) -> dict[str, EndpointStatus]:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at >= self._max_age:
                self._status = self._board.read()
                self._read_at = now
            return self._status

    def expire(self) -> None:
        """Read the board again at the next question."""
        with self._lock:
            self._read_at = float("-inf")

    def is_down(self, name: str) -> bool:
        status = self._current().get(name)
        return status is not None and status.down

    def health(self, name: str) -> str:
        status = self._current().get(name)
        return "unknown" if status is None else status.health

    def failed_over(self) -> set[str]:
        now = self._clock()
        return {name for name, status in self._current().items()
                if status.down and status.down_since is not None
                and now - status.down_since >= self.failover_after}

    def stored(self, name: str) -> int:
        status = self._current().get(name)
        return 0 if status is None or status.load is None else status.load
