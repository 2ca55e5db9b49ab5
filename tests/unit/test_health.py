"""HealthMonitor with an injected probe and clock: no thread, no network."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from dde.config import EndpointSettings, HealthSettings
from dde.endpoints.health import HealthMonitor


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Probe:
    """Answers per endpoint name: None (up) or the reason it is down; records the calls."""

    def __init__(self) -> None:
        self.problems: dict[str, str | None] = {}
        self.calls: list[str] = []

    def __call__(self, endpoint: EndpointSettings) -> str | None:
        self.calls.append(endpoint.name)
        problem = self.problems.get(endpoint.name)
        if problem == "raise":
            raise RuntimeError("probe bug")
        return problem


def ep(name: str) -> EndpointSettings:
    return EndpointSettings(name=name, aet=name, groups=["storage"])


def settings(threshold: int = 2, failover: float = 60.0,
             interval: float = 5.0) -> HealthSettings:
    return HealthSettings(interval_seconds=interval, failure_threshold=threshold,
                          failover_after_seconds=failover)


def monitor(names: Iterable[str] = ("A", "B"), **kwargs: float) -> tuple[
        HealthMonitor, Probe, Clock, list[tuple[str, bool]]]:
    probe, clock = Probe(), Clock()
    health_settings = settings(**kwargs)  # type: ignore[arg-type]
    health = HealthMonitor(health_settings, "DDE_TEST", probe=probe, clock=clock)
    health.configure(health_settings, [ep(n) for n in names])
    changes: list[tuple[str, bool]] = []
    health.listeners.append(lambda name, up: changes.append((name, up)))
    return health, probe, clock, changes


def test_every_endpoint_is_unknown_before_the_first_probe() -> None:
    health, probe, _, changes = monitor()

    assert health.health("A") == "unknown"
    assert health.health("B") == "unknown"
    assert health.health("NOT-CONFIGURED") == "unknown"
    assert not health.is_down("A")
    assert health.allows("A")
    assert health.failed_over() == set()
    assert probe.calls == [] and changes == []
    assert {name: entry["health"] for name, entry in health.snapshot().items()} == {
        "A": "unknown", "B": "unknown"}


def test_probe_once_probes_every_endpoint_and_reports_up() -> None:
    health, probe, _, changes = monitor()

    health.probe_once()

    assert sorted(probe.calls) == ["A", "B"]
    assert health.health("A") == "up" and health.health("B") == "up"
    assert changes == []  # unknown → up is not a change of down/up


def test_down_after_threshold_consecutive_failed_probes_and_up_again() -> None:
    health, probe, clock, changes = monitor(threshold=2)
    probe.problems["B"] = "C-ECHO: association rejected"

    health.probe_once()
    assert not health.is_down("B")
    assert changes == []

    clock.now += 5
    health.probe_once()
    assert health.is_down("B")
    assert health.health("B") == "down"
    assert health.health("A") == "up"
    assert changes == [("B", False)]
    snapshot = health.snapshot()["B"]
    assert snapshot["health"] == "down"
    assert snapshot["breaker"] == "open"
    assert snapshot["down_since"] == 1000.0
    assert snapshot["last_error"] == "C-ECHO: association rejected"

    clock.now += 5
    health.probe_once()  # still down: no second notification
    assert changes == [("B", False)]

    probe.problems["B"] = None
    clock.now += 5
    health.probe_once()
    assert health.health("B") == "up"
    assert not health.is_down("B")
    assert changes == [("B", False), ("B", True)]
    assert health.snapshot()["B"]["down_since"] is None

    health.probe_once()
    assert changes == [("B", False), ("B", True)]


def test_report_feeds_the_same_breaker_as_the_probes() -> None:
    health, _, _, changes = monitor(threshold=3)

    health.report("A", False, "send failed")
    health.report("A", False, "send failed")
    assert not health.is_down("A")
    health.report("A", True)
    health.report("A", False, "send failed")
    health.report("A", False, "send failed")
    assert not health.is_down("A")  # the success in between reset the count
    health.report("A", False, "send failed")

    assert health.is_down("A")
    assert changes == [("A", False)]


def test_a_probe_that_raises_counts_as_a_failure() -> None:
    health, probe, _, changes = monitor(threshold=1)
    probe.problems["A"] = "raise"

    health.probe_once()

    assert health.is_down("A")
    assert health.snapshot()["A"]["last_error"] == "probe failed: RuntimeError"
    assert changes == [("A", False)]
    assert health.health("B") == "up"  # the other endpoint was still probed


def test_a_down_endpoint_is_not_allowed_until_its_backoff_elapsed() -> None:
    health, probe, clock, _ = monitor(threshold=1, interval=5.0)  # base backoff 1 s
    probe.problems["A"] = "refused"
    health.probe_once()

    assert not health.allows("A")
    clock.now += 0.5
    assert not health.allows("A")
    clock.now += 0.5
    assert health.allows("A")  # half-open: one try
    assert health.is_down("A")


def test_failed_over_after_failover_after_seconds_of_the_fake_clock() -> None:
    health, probe, clock, _ = monitor(threshold=2, failover=60.0)
    probe.problems["A"] = "refused"
    health.probe_once()  # first failure at 1000
    clock.now = 1005.0
    health.probe_once()  # down since 1000

    clock.now = 1059.0
    assert health.is_down("A")
    assert health.failed_over() == set()
    clock.now = 1060.0
    assert health.failed_over() == {"A"}
    clock.now = 5000.0
    assert health.failed_over() == {"A"}

    probe.problems["A"] = None
    health.probe_once()
    assert health.failed_over() == set()


def test_failures_below_the_threshold_never_fail_over() -> None:
    health, _, clock, _ = monitor(threshold=3, failover=10.0)
    health.report("A", False, "x")
    health.report("A", False, "x")
    clock.now += 3600

    assert health.failed_over() == set()
    assert not health.is_down("A")


def test_failover_after_zero_fails_over_as_soon_as_it_is_down() -> None:
    health, _, _, _ = monitor(threshold=1, failover=0.0)
    health.report("B", False, "x")

    assert health.failed_over() == {"B"}


def test_configure_drops_removed_endpoints_and_adds_new_ones_as_unknown() -> None:
    health, probe, _, changes = monitor(["A", "B"], threshold=1, failover=0.0)
    probe.problems["B"] = "refused"
    health.probe_once()
    assert health.is_down("B") and health.failed_over() == {"B"}

    health.configure(settings(threshold=1, failover=0.0), [ep("A"), ep("C")])

    assert set(health.snapshot()) == {"A", "C"}
    assert health.health("B") == "unknown"
    assert not health.is_down("B")
    assert health.failed_over() == set()
    assert health.health("C") == "unknown"
    assert health.health("A") == "up"  # kept its state
    health.report("B", False, "ignored")  # reports for a removed endpoint are ignored
    assert "B" not in health.snapshot()
    assert changes == [("B", False)]

    probe.calls.clear()
    health.probe_once()
    assert sorted(probe.calls) == ["A", "C"]

    # B comes back as a new endpoint: unknown, with a fresh breaker.
    health.configure(settings(threshold=1, failover=0.0), [ep("A"), ep("B"), ep("C")])
    assert health.health("B") == "unknown" and not health.is_down("B")


def test_configure_applies_a_new_failover_time_at_once() -> None:
    health, _, clock, _ = monitor(threshold=1, failover=600.0)
    health.report("A", False, "x")
    clock.now += 100

    assert health.failed_over() == set()
    health.configure(settings(threshold=1, failover=60.0), [ep("A"), ep("B")])
    assert health.failed_over() == {"A"}


@pytest.mark.parametrize("new_threshold", [1, 5])
def test_configure_applies_a_new_failure_threshold_to_existing_endpoints(
        new_threshold: int) -> None:
    # Invariant 6: a configuration change takes effect without a restart. A breaker made
    # under the old threshold must follow the new one.
    health, _, _, _ = monitor(threshold=3)
    health.configure(settings(threshold=new_threshold), [ep("A"), ep("B")])

    for _ in range(new_threshold - 1):
        health.report("A", False, "x")
    assert not health.is_down("A")
    health.report("A", False, "x")
    assert health.is_down("A")


# -- issue item 5: a new endpoint is unknown until it answers, and probed first ----------

def test_an_endpoint_whose_first_probes_fail_stays_unknown_until_its_breaker_opens() -> None:
    health, probe, _, _ = monitor(names=("A",), threshold=3)
    probe.problems["A"] = "refused"

    health.probe_once()
    assert health.health("A") == "unknown"  # it was "up" after one failed probe
    health.probe_once()
    assert health.health("A") == "unknown"
    health.probe_once()
    assert health.health("A") == "down"


def test_an_endpoint_that_answered_once_stays_up_below_the_threshold() -> None:
    health, probe, _, _ = monitor(names=("A",), threshold=3)
    health.probe_once()
    probe.problems["A"] = "refused"

    health.probe_once()

    assert health.health("A") == "up"


def test_an_added_endpoint_is_probed_before_the_others() -> None:
    health, probe, _, _ = monitor(names=("A", "B"))
    health.probe_once()
    probe.calls.clear()

    health.configure(settings(), [ep("A"), ep("B"), ep("C")])
    health.probe_once()

    assert probe.calls == ["C", "A", "B"]


def test_status_listeners_hear_unknown_to_up_and_each_change_once() -> None:
    health, probe, _, _ = monitor(names=("A",), threshold=1)
    heard: list[tuple[str, str]] = []
    health.status_listeners.append(lambda name, state: heard.append((name, state)))

    health.probe_once()
    health.probe_once()
    probe.problems["A"] = "refused"
    health.probe_once()
    health.probe_once()

    assert heard == [("A", "up"), ("A", "down")]


def test_wait_first_round_returns_once_the_thread_probed_every_endpoint() -> None:
    health, probe, _, _ = monitor(names=("A", "B"))
    assert not health.wait_first_round(0)
    health.start()
    try:
        assert health.wait_first_round(5.0)
        assert health.health("A") == "up" and health.health("B") == "up"
    finally:
        health.stop()


def test_a_router_sends_no_new_study_to_an_endpoint_added_but_not_probed_yet() -> None:
    """The reported incident: `endpoints add` of an unreachable PACS, a study a second later
    went to it (least-loaded, load 0) and waited for failover."""
    from pydicom.uid import generate_uid
    from tests.support.unitkit import FakeLoads, FakeView, generated

    from dde.config import RoutingSettings
    from dde.dicom.header import parse_header
    from dde.routing.router import Router

    health, probe, _, _ = monitor(names=("A",))
    health.probe_once()
    endpoints = [ep("A"), ep("NEW")]
    health.configure(settings(), endpoints)
    probe.problems["NEW"] = "refused"
    router = Router(RoutingSettings(mirror=[]), endpoints, FakeLoads({"A": 900, "NEW": 0}),
                    health)
    instance = generated(generate_uid())

    def destination() -> tuple[str, ...]:
        header = parse_header(instance.dataset, instance.transfer_syntax_uid)
        return router.route(header, FakeView()).destinations

    assert destination() == ("A",)  # before its first probe
    health.probe_once()
    assert destination() == ("A",)  # after a failed one (not down yet)
