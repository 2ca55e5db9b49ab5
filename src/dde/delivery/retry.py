"""Retry policy: exponential backoff with jitter, capped, and a limit on attempts. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass

RETRY_AFTER_LIMIT_SECONDS = 3600.0
"""The longest wait a destination's ``Retry-After`` can impose: a wrong or hostile header
cannot park deliveries for days."""


@dataclass(frozen=True)
class RetryDecision:
    give_up: bool
    delay: float
    """Seconds until the next attempt (0 when giving up)."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base: float = 1.0
    cap: float = 300.0

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Delay after ``failures`` consecutive failures (≥ 1): ``base·2^(n-1)``, capped,
        with "equal jitter" (half fixed, half random) so retries of a burst spread out."""
        # The exponent is bounded: an endpoint down for days counts thousands of failures,
        # and 2.0 ** 1024 overflows a float.
        exponent = min(max(0, failures - 1), 512)
        ceiling = min(self.cap, self.base * 2.0**exponent)
        draw: float = (rng or random).random()
        return float(ceiling / 2 + draw * ceiling / 2)

    def after_failure(self, attempts: int, *, permanent: bool,
                      rng: random.Random | None = None) -> RetryDecision:
        """What to do after the ``attempts``-th attempt of a delivery failed."""
        if permanent or attempts >= self.max_attempts:
            return RetryDecision(give_up=True, delay=0.0)
        return RetryDecision(give_up=False, delay=self.backoff(attempts, rng))

    def after_throttle(self, retry_after: float | None,
                       rng: random.Random | None = None) -> float:
        """Delay before sending again to a destination that asked us to wait (HTTP 429, 503
        with ``Retry-After``): the wait it asked for, bounded by
        :data:`RETRY_AFTER_LIMIT_SECONDS`, and never less than the first backoff (a
        ``Retry-After: 0`` must not make a busy loop); without a figure, the first backoff.
        Spends no attempt: the destination did not judge the instances."""
        floor = self.backoff(1, rng)
        if retry_after is None:
            return floor
        return max(floor, min(retry_after, RETRY_AFTER_LIMIT_SECONDS))
