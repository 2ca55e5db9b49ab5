"""Retry policy: exponential backoff with jitter, capped, and a limit on attempts. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass


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
