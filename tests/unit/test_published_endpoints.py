"""Health and load as published in the ledger, read back by receiver processes."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from pydicom.uid import generate_uid
from tests.support.unitkit import FakeView, endpoint, generated

from dde.config import RoutingSettings
from dde.dicom.header import parse_header
from dde.routing import published
from dde.routing.published import PublishedEndpoints
from dde.routing.router import Router
from dde.store.ledger import Ledger
from dde.store.status_board import PublishedStatus

Row = PublishedStatus


def up(name: str, load: int | None) -> Row:
    return PublishedStatus(name, "up", "closed", None, None, load)


def down(name: str, since: float, load: int | None = None) -> Row:
    return PublishedStatus(name, "down", "open", since, "connection refused", load)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_published_health_and_load_are_read_back(ledger: Ledger) -> None:
    ledger.status_board.publish([up("ORTHANC1", 7), down("ORTHANC2", 1000.0, 3)])

    view = PublishedEndpoints(ledger.status_board, failover_after=60)

    assert not view.is_down("ORTHANC1")
    assert view.is_down("ORTHANC2")
    assert view.stored("ORTHANC1") == 7
    assert view.stored("ORTHANC2") == 3


def test_an_endpoint_not_published_is_up_with_no_load(ledger: Ledger) -> None:
    ledger.status_board.publish([down("ORTHANC1", 1000.0, 9)])

    view = PublishedEndpoints(ledger.status_board, failover_after=0, clock=Clock(5000.0))

    assert not view.is_down("NEW-PACS")
    assert view.stored("NEW-PACS") == 0
    assert "NEW-PACS" not in view.failed_over()


def test_an_unknown_load_counts_as_zero(ledger: Ledger) -> None:
    ledger.status_board.publish([up("ORTHANC1", None)])

    assert PublishedEndpoints(ledger.status_board, failover_after=60).stored("ORTHANC1") == 0


def test_failed_over_once_down_for_failover_after_seconds(ledger: Ledger) -> None:
    ledger.status_board.publish([down("ORTHANC1", 1000.0), down("ORTHANC2", 1050.0),
                           up("ORTHANC3", 0)])
    clock = Clock(1059.0)
    view = PublishedEndpoints(ledger.status_board, failover_after=60, clock=clock)

    assert view.failed_over() == set()
    clock.now = 1060.0
    assert view.failed_over() == {"ORTHANC1"}
    clock.now = 1110.0
    assert view.failed_over() == {"ORTHANC1", "ORTHANC2"}


def test_down_without_a_down_since_never_fails_over(ledger: Ledger) -> None:
    ledger.status_board.publish([PublishedStatus("ORTHANC1", "down", "open", None, "refused", 0)])

    view = PublishedEndpoints(ledger.status_board, failover_after=0, clock=Clock(1e12))

    assert view.is_down("ORTHANC1")
    assert view.failed_over() == set()


def test_with_max_age_zero_every_question_reads_the_ledger(ledger: Ledger) -> None:
    ledger.status_board.publish([up("ORTHANC1", 1)])
    view = PublishedEndpoints(ledger.status_board, failover_after=60, max_age=0)
    assert not view.is_down("ORTHANC1")

    ledger.status_board.publish([down("ORTHANC1", 1000.0, 2)])

    assert view.is_down("ORTHANC1")
    assert view.stored("ORTHANC1") == 2


def test_the_picture_is_cached_for_max_age_seconds(ledger: Ledger,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monotonic = Clock(100.0)
    monkeypatch.setattr(published, "time", SimpleNamespace(monotonic=monotonic, time=time.time))
    ledger.status_board.publish([up("ORTHANC1", 1)])
    view = PublishedEndpoints(ledger.status_board, failover_after=60, max_age=0.5)
    assert view.stored("ORTHANC1") == 1

    ledger.status_board.publish([down("ORTHANC1", 1000.0, 2)])
    monotonic.now = 100.4
    assert view.stored("ORTHANC1") == 1  # still the cached picture
    assert not view.is_down("ORTHANC1")

    monotonic.now = 100.5
    assert view.stored("ORTHANC1") == 2
    assert view.is_down("ORTHANC1")


ENDPOINTS = [endpoint("ORTHANC1"), endpoint("ORTHANC2"), endpoint("ORTHANC3")]


def published_view(ledger: Ledger) -> PublishedEndpoints:
    return PublishedEndpoints(ledger.status_board, 60, max_age=0)


def router_with(view: PublishedEndpoints) -> Router:
    return Router(RoutingSettings(mirror=[]), ENDPOINTS, view, view)


def destination(router: Router) -> str:
    instance = generated(generate_uid())
    route = router.route(parse_header(instance.dataset, instance.transfer_syntax_uid),
                         FakeView())
    (chosen,) = route.destinations
    return chosen


def test_the_router_picks_the_least_loaded_published_endpoint(ledger: Ledger) -> None:
    ledger.status_board.publish([up("ORTHANC1", 30), up("ORTHANC2", 10), up("ORTHANC3", 20)])

    assert destination(router_with(published_view(ledger))) == "ORTHANC2"


def test_the_router_avoids_a_published_down_endpoint(ledger: Ledger) -> None:
    ledger.status_board.publish([up("ORTHANC1", 30), down("ORTHANC2", 1000.0, 0),
                           up("ORTHANC3", 20)])

    assert destination(router_with(published_view(ledger))) == "ORTHANC3"


def test_the_router_follows_a_new_publication(ledger: Ledger) -> None:
    ledger.status_board.publish([up("ORTHANC1", 0), up("ORTHANC2", 50), up("ORTHANC3", 50)])
    router = router_with(PublishedEndpoints(ledger.status_board, 60, max_age=0))
    assert destination(router) == "ORTHANC1"

    ledger.status_board.publish([down("ORTHANC1", 1000.0, 0), up("ORTHANC2", 50),
                           up("ORTHANC3", 40)])

    assert destination(router) == "ORTHANC3"


# -- issue item 5: an endpoint whose health is not known gets no new study ----------------

def test_an_endpoint_not_published_is_unknown(ledger: Ledger) -> None:
    ledger.status_board.publish([up("ORTHANC1", 9)])

    view = PublishedEndpoints(ledger.status_board, failover_after=60)

    assert view.health("ORTHANC1") == "up"
    assert view.health("NEW-PACS") == "unknown"


def test_the_router_avoids_an_endpoint_missing_from_the_board(ledger: Ledger) -> None:
    """Just added: the receiver's configuration has it, the board not yet. Least-loaded
    used to pick it (load 0) before the main process had probed it."""
    ledger.status_board.publish([up("ORTHANC1", 30), up("ORTHANC2", 20)])

    assert destination(router_with(published_view(ledger))) == "ORTHANC2"


def test_the_router_avoids_an_endpoint_published_as_unknown(ledger: Ledger) -> None:
    ledger.status_board.publish([up("ORTHANC1", 30), up("ORTHANC2", 20),
                                 PublishedStatus("ORTHANC3", "unknown", "closed", None, None, 0)])

    assert destination(router_with(published_view(ledger))) == "ORTHANC2"


def test_with_nothing_published_the_router_still_routes(ledger: Ledger) -> None:
    """No member known up (the router just started, or it is not running): the unknown
    members take new studies rather than refusing them."""
    assert destination(router_with(published_view(ledger))) == "ORTHANC1"
