"""The retry policy: exponential backoff, capped, equal jitter, a limit on attempts."""

from __future__ import annotations

import random

import pytest

from dde.delivery.retry import RetryPolicy


class FixedDraw(random.Random):
    """A random source whose every draw is ``value`` (to pin the jitter's extremes)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(("failures", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0),
                                                   (5, 16.0)])
def test_backoff_doubles_with_each_failure(failures: int, ceiling: float) -> None:
    policy = RetryPolicy(base=1.0, cap=300.0)

    assert policy.backoff(failures, FixedDraw(0.0)) == pytest.approx(ceiling / 2)
    assert policy.backoff(failures, FixedDraw(0.999999)) == pytest.approx(ceiling, rel=1e-5)


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)

    for failures in (5, 6, 20, 200):
        assert policy.backoff(failures, FixedDraw(0.999999)) == pytest.approx(10.0, rel=1e-5)
        assert policy.backoff(failures, FixedDraw(0.0)) == pytest.approx(5.0)


def test_backoff_base_scales_the_delay() -> None:
    policy = RetryPolicy(base=0.25, cap=100.0)

    assert policy.backoff(3, FixedDraw(0.0)) == pytest.approx(0.5)  # ceiling 0.25 * 4 = 1


def test_jitter_stays_within_half_and_whole_ceiling_and_spreads() -> None:
    policy = RetryPolicy(base=1.0, cap=60.0)
    rng = random.Random(20260101)

    for failures in range(1, 12):
        ceiling = min(60.0, 2.0 ** (failures - 1))
        delays = [policy.backoff(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), failures
        # Jitter is real: a burst of retries does not fire at the same instant.
        assert len({round(d, 9) for d in delays}) > 150
        assert max(delays) - min(delays) > ceiling / 4


def test_same_seed_gives_the_same_delays() -> None:
    policy = RetryPolicy()

    first = [policy.backoff(n, random.Random(7)) for n in range(1, 9)]
    second = [policy.backoff(n, random.Random(7)) for n in range(1, 9)]

    assert first == second


def test_zero_or_negative_failures_count_as_the_first() -> None:
    policy = RetryPolicy(base=2.0)

    assert policy.backoff(0, FixedDraw(0.0)) == pytest.approx(1.0)


def test_after_a_transient_failure_retry_with_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, base=1.0, cap=300.0)

    decision = policy.after_failure(3, permanent=False, rng=random.Random(1))

    assert decision.give_up is False
    assert 2.0 <= decision.delay <= 4.0


def test_gives_up_once_max_attempts_are_spent() -> None:
    policy = RetryPolicy(max_attempts=3)
    rng = random.Random(3)

    assert not policy.after_failure(1, permanent=False, rng=rng).give_up
    assert not policy.after_failure(2, permanent=False, rng=rng).give_up
    final = policy.after_failure(3, permanent=False, rng=rng)
    assert final.give_up is True
    assert final.delay == 0.0
    assert policy.after_failure(4, permanent=False, rng=rng).give_up


def test_permanent_refusal_gives_up_at_once() -> None:
    decision = RetryPolicy(max_attempts=8).after_failure(1, permanent=True)

    assert decision.give_up is True
    assert decision.delay == 0.0


def test_single_attempt_policy_never_retries() -> None:
    assert RetryPolicy(max_attempts=1).after_failure(1, permanent=False).give_up


@pytest.mark.parametrize("failures", [1025, 5000, 10**6])
def test_a_destination_down_for_days_still_gets_a_capped_delay(failures: int) -> None:
    # The dispatcher counts consecutive unreachable rounds without bound: after ~1000
    # rounds (2.6 days at the default 300 s cap) 2**(n-1) no longer fits a float.
    policy = RetryPolicy(base=1.0, cap=300.0)

    delay = policy.backoff(failures, random.Random(failures))

    assert 150.0 <= delay <= 300.0
    assert policy.after_failure(failures, permanent=False).give_up  # > max_attempts
    assert not RetryPolicy(max_attempts=10**7).after_failure(failures, permanent=False).give_up


def test_a_throttle_waits_as_long_as_the_destination_asked() -> None:
    policy = RetryPolicy(base=1.0, cap=300.0)

    assert policy.after_throttle(42.0, FixedDraw(0.5)) == 42.0
    assert policy.after_throttle(900.0, FixedDraw(0.5)) == 900.0  # beyond the cap: honoured


def test_a_throttle_is_bounded_both_ways() -> None:
    from dde.delivery.retry import RETRY_AFTER_LIMIT_SECONDS

    policy = RetryPolicy(base=2.0, cap=300.0)

    assert policy.after_throttle(0.0, FixedDraw(0.0)) == 1.0  # never a busy loop
    assert policy.after_throttle(None, FixedDraw(0.0)) == 1.0  # no figure: the first backoff
    assert policy.after_throttle(10 * 86400.0, FixedDraw(0.0)) == RETRY_AFTER_LIMIT_SECONDS
