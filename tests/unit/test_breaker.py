"""The circuit breaker of one endpoint: closed → open → half-open, backoff, down time."""

from __future__ import annotations

from dde.endpoints.breaker import Breaker, BreakerState


def tripped(now: float = 100.0) -> Breaker:
    """A breaker (threshold 3, backoff 1 s doubling up to 8 s) opened by failures at
    ``now``, ``now + 1`` and ``now + 2``."""
    breaker = Breaker(threshold=3, base_backoff=1.0, max_backoff=8.0)
    for i in range(3):
        breaker.record_failure(now + i, f"refused {i}")
    return breaker


def test_a_new_breaker_is_closed_and_up() -> None:
    breaker = Breaker()

    assert breaker.state(0.0) is BreakerState.CLOSED
    assert not breaker.down
    assert breaker.allows(0.0)
    assert breaker.down_for(1000.0) == 0.0
    assert breaker.down_since is None


def test_it_opens_after_threshold_consecutive_failures_not_before() -> None:
    breaker = Breaker(threshold=3, base_backoff=1.0, max_backoff=8.0)

    breaker.record_failure(10.0, "refused")
    breaker.record_failure(11.0, "refused")
    assert breaker.state(11.0) is BreakerState.CLOSED
    assert not breaker.down and breaker.allows(11.0)

    breaker.record_failure(12.0, "timeout")
    assert breaker.state(12.0) is BreakerState.OPEN
    assert breaker.down
    assert not breaker.allows(12.5)
    assert breaker.failures == 3
    assert breaker.last_error == "timeout"


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = Breaker(threshold=3)
    breaker.record_failure(1.0, "x")
    breaker.record_failure(2.0, "x")
    breaker.record_success()
    breaker.record_failure(3.0, "x")
    breaker.record_failure(4.0, "x")

    assert breaker.state(4.0) is BreakerState.CLOSED
    assert not breaker.down
    assert breaker.failures == 2
    assert breaker.down_since == 3.0  # the new run of failures began at 3.0


def test_a_success_closes_an_open_breaker_and_forgets_everything() -> None:
    breaker = tripped()
    breaker.record_success()

    assert breaker.state(102.5) is BreakerState.CLOSED
    assert not breaker.down
    assert breaker.failures == 0
    assert breaker.down_since is None and breaker.last_error is None
    assert breaker.down_for(500.0) == 0.0
    # the next trip starts again from the base backoff
    for i in range(3):
        breaker.record_failure(200.0 + i, "x")
    assert breaker.backoff() == 1.0


def test_open_becomes_half_open_once_the_backoff_elapsed() -> None:
    breaker = tripped(now=100.0)  # opened at 102

    assert breaker.backoff() == 1.0
    assert breaker.state(102.0) is BreakerState.OPEN
    assert breaker.state(102.9) is BreakerState.OPEN
    assert not breaker.allows(102.9)
    assert breaker.state(103.0) is BreakerState.HALF_OPEN
    assert breaker.allows(103.0)
    assert breaker.down  # half-open is still not trusted with new studies


def test_a_half_open_failure_reopens_with_a_doubled_backoff_capped() -> None:
    breaker = tripped(now=0.0)  # opened at 2 with backoff 1
    now = 2.0
    expected = [2.0, 4.0, 8.0, 8.0, 8.0]
    for backoff in expected:
        now += breaker.backoff()
        assert breaker.state(now) is BreakerState.HALF_OPEN
        breaker.record_failure(now, "still refused")
        assert breaker.state(now) is BreakerState.OPEN
        assert breaker.backoff() == backoff
        assert breaker.state(now + backoff - 0.5) is BreakerState.OPEN
        assert breaker.state(now + backoff) is BreakerState.HALF_OPEN


def test_a_half_open_success_closes() -> None:
    breaker = tripped(now=0.0)

    assert breaker.state(5.0) is BreakerState.HALF_OPEN
    breaker.record_success()

    assert breaker.state(5.0) is BreakerState.CLOSED and not breaker.down


def test_down_since_is_the_first_failure_and_down_for_counts_while_open() -> None:
    breaker = Breaker(threshold=2, base_backoff=1.0, max_backoff=8.0)
    breaker.record_failure(50.0, "x")
    assert breaker.down_since == 50.0
    assert breaker.down_for(60.0) == 0.0  # not open yet: not down

    breaker.record_failure(52.0, "x")
    assert breaker.down_since == 50.0
    assert breaker.down_for(60.0) == 10.0
    breaker.record_failure(70.0, "x")  # a failed half-open try does not restart the clock
    assert breaker.down_since == 50.0
    assert breaker.down_for(80.0) == 30.0


def test_threshold_one_opens_on_the_first_failure() -> None:
    breaker = Breaker(threshold=1, base_backoff=0.5, max_backoff=1.0)
    breaker.record_failure(3.0, "x")

    assert breaker.state(3.0) is BreakerState.OPEN
    assert breaker.state(3.5) is BreakerState.HALF_OPEN
    assert breaker.down_for(4.0) == 1.0
