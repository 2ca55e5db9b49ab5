"""Circuit breaker for one endpoint. Pure: the caller passes the clock.

closed ──(threshold consecutive failures)──▶ open ──(backoff elapsed)──▶ half-open
  ▲                                           ▲                              │
  └───────────────(a success)─────────────────┴───(a failure: longer backoff)┘

While open the endpoint counts as down: it gets no new studies and its worker waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class Breaker:
    threshold: int = 3
    base_backoff: float = 1.0
    max_backoff: float = 60.0
    failures: int = 0
    opened_at: float | None = None
    down_since: float | None = None
    """When the current run of failures began (for failover); None while healthy."""
    last_error: str | None = None
    _trips: int = 0

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at >= self.backoff():
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def backoff(self) -> float:
        return float(min(self.max_backoff, self.base_backoff * 2 ** max(0, self._trips - 1)))

    @property
    def down(self) -> bool:
        """Open or half-open: not trusted with new studies."""
        return self.opened_at is not None

    def allows(self, now: float) -> bool:
        return self.state(now) is not BreakerState.OPEN

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.down_since = None
        self.last_error = None
        self._trips = 0

    def record_failure(self, now: float, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.down_since is None:
            self.down_since = now
        if self.opened_at is not None or self.failures >= self.threshold:
            self._trips += 1
            self.opened_at = now

    def down_for(self, now: float) -> float:
        """Seconds since the failures began, while the breaker is open; else 0."""
        if self.opened_at is None or self.down_since is None:
            return 0.0
        return now - self.down_since
