"""The router: live loads + queued work + pins → one ledger route per instance."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydicom.uid import generate_uid
from tests.support.unitkit import FakeView, endpoint, generated, load_book

from dde.config import EndpointSettings, RoutingSettings
from dde.dicom.header import InstanceHeader, parse_header
from dde.endpoints.load import LoadBook
from dde.routing.route import Route
from dde.routing.router import NoRoute, Router
from dde.routing.rules import default_ruleset

STORAGE = [endpoint("ORTHANC1", url="http://pacs1"), endpoint("ORTHANC2", url="http://pacs2")]
PROBE = endpoint("ORTHANC-PROBE", ["probe"], url="http://probe")
ENDPOINTS = [*STORAGE, PROBE]


def header(study_uid: str | None = None) -> InstanceHeader:
    instance = generated(study_uid)
    parsed = parse_header(instance.dataset, instance.transfer_syntax_uid)
    if study_uid is None:
        return parsed
    assert parsed.study_instance_uid == study_uid
    return parsed


def no_study_header() -> InstanceHeader:
    parsed = header()
    return InstanceHeader(parsed.sop_class_uid, parsed.sop_instance_uid,
                          parsed.transfer_syntax_uid, None, None, None, None, None,
                          parsed.dataset)


def make_router(loads: LoadBook, mirror: list[str] | None = None,
                endpoints: Sequence[EndpointSettings] = ENDPOINTS) -> Router:
    routing = RoutingSettings(mirror=["ORTHANC-PROBE"] if mirror is None else mirror)
    return Router(routing, endpoints, loads)


def route_and_commit(router: Router, view: FakeView, study_uid: str) -> Route:
    route = router.route(header(study_uid), view)
    view.commit(route)
    return route


def test_a_burst_of_new_studies_alternates_because_queued_work_counts() -> None:
    # Both PACS hold the same (polled) count; nothing is delivered yet during the burst.
    router = make_router(load_book({"ORTHANC1": 10, "ORTHANC2": 10, "ORTHANC-PROBE": 0},
                                   ENDPOINTS))
    view = FakeView()

    chosen = [route_and_commit(router, view, generate_uid()).destinations[0] for _ in range(6)]

    assert chosen == ["ORTHANC1", "ORTHANC2"] * 3


def test_polled_instance_counts_steer_new_studies_to_the_emptier_pacs() -> None:
    router = make_router(load_book({"ORTHANC1": 3, "ORTHANC2": 0, "ORTHANC-PROBE": 50},
                                   ENDPOINTS))
    view = FakeView()

    chosen = [route_and_commit(router, view, generate_uid()).destinations[0] for _ in range(5)]

    # ORTHANC2 takes the first three (0, 1, 2 < 3); at 3 = 3 the tie goes to ORTHANC1.
    assert chosen == ["ORTHANC2", "ORTHANC2", "ORTHANC2", "ORTHANC1", "ORTHANC2"]


def test_deliveries_noted_between_polls_count_as_load() -> None:
    loads = load_book({"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC-PROBE": 0}, ENDPOINTS)
    loads.note_delivered("ORTHANC1", 2)
    router = make_router(loads)

    route = router.route(header(generate_uid()), FakeView())

    assert route.destinations == ("ORTHANC2",)


def test_queued_counts_of_the_view_are_part_of_the_load() -> None:
    router = make_router(load_book({"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC-PROBE": 0},
                                   ENDPOINTS))

    route = router.route(header(generate_uid()), FakeView(queued={"ORTHANC1": 1}))

    assert route.destinations == ("ORTHANC2",)


def test_new_study_creates_a_pin_with_the_group() -> None:
    router = make_router(load_book({"ORTHANC1": 5, "ORTHANC2": 0, "ORTHANC-PROBE": 0},
                                   ENDPOINTS))
    study = generate_uid()

    route = router.route(header(study), FakeView())

    assert route.all_pins() == ((study, "ORTHANC2", "storage"),)
    assert route.rule == "default"


def test_later_instances_of_a_study_follow_the_pin_whatever_the_load() -> None:
    router = make_router(load_book({"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC-PROBE": 0},
                                   ENDPOINTS))
    view = FakeView()
    study = generate_uid()
    first = route_and_commit(router, view, study)
    # Much more work piles up on the pinned PACS than on the other one.
    view.queued[first.destinations[0]] += 1000

    later = [route_and_commit(router, view, study) for _ in range(5)]

    assert {r.destinations for r in later} == {first.destinations}
    assert all(r.all_pins() == () for r in later)


def test_pin_to_a_removed_endpoint_moves_the_study_and_repins() -> None:
    loads = load_book({"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC-PROBE": 0}, ENDPOINTS)
    router = make_router(loads)
    study = generate_uid()
    view = FakeView(pins={(study, "storage"): "ORTHANC1"}, queued={"ORTHANC2": 3})
    router.configure(default_ruleset(mirror=["ORTHANC-PROBE"]),
                     [STORAGE[1], PROBE, endpoint("ORTHANC3")])

    route = router.route(header(study), view)

    # Queued work is taken into account for the new choice (ORTHANC2 has 3 waiting).
    assert route.destinations == ("ORTHANC3",)
    assert route.all_pins() == ((study, "ORTHANC3", "storage"),)


def test_instance_without_study_uid_is_routed_but_never_pinned() -> None:
    router = make_router(load_book({"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC-PROBE": 0},
                                   ENDPOINTS))

    route = router.route(no_study_header(), FakeView())

    assert route.destinations == ("ORTHANC1",)
    assert route.all_pins() == ()


def test_every_instance_is_mirrored_to_the_probe() -> None:
    router = make_router(load_book({"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC-PROBE": 0},
                                   ENDPOINTS))

    route = router.route(header(generate_uid()), FakeView())

    assert route.mirrors == ("ORTHANC-PROBE",)
    assert "ORTHANC-PROBE" not in route.destinations


def test_mirror_never_duplicates_the_storage_destination() -> None:
    router = make_router(load_book({"ORTHANC1": 0, "ORTHANC2": 9, "ORTHANC-PROBE": 0},
                                   ENDPOINTS), mirror=["ORTHANC1", "ORTHANC-PROBE"])

    route = router.route(header(generate_uid()), FakeView())

    assert route.destinations == ("ORTHANC1",)
    assert route.mirrors == ("ORTHANC-PROBE",)


def test_unknown_mirror_names_are_ignored() -> None:
    router = make_router(load_book({"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC-PROBE": 0},
                                   ENDPOINTS), mirror=["NO-SUCH-PACS", "ORTHANC-PROBE"])

    route = router.route(header(generate_uid()), FakeView())

    assert route.mirrors == ("ORTHANC-PROBE",)


def test_configure_takes_effect_for_the_next_instance() -> None:
    router = make_router(load_book({"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC-PROBE": 0},
                                   ENDPOINTS))
    router.configure(default_ruleset(mirror=[]), [STORAGE[1], PROBE])

    route = router.route(header(generate_uid()), FakeView())

    assert route.destinations == ("ORTHANC2",)
    assert route.mirrors == ()


def test_no_storage_endpoint_is_no_route() -> None:
    router = make_router(load_book(), endpoints=[PROBE])

    with pytest.raises(NoRoute):
        router.route(header(generate_uid()), FakeView())


def test_a_failed_poll_keeps_the_last_count_and_notes_the_error() -> None:
    counts = {"ORTHANC1": 7, "ORTHANC2": 0, "ORTHANC-PROBE": 0}
    loads = load_book(counts, ENDPOINTS)
    del counts["ORTHANC1"]  # the fake Orthanc now answers 500 for it (KeyError → handler)

    loads.poll_once()

    assert loads.stored("ORTHANC1") == 7
    snapshot = loads.snapshot()
    assert snapshot["ORTHANC1"]["error"] is not None
    assert snapshot["ORTHANC2"]["error"] is None


def test_a_poll_replaces_the_deliveries_noted_since_the_last_one() -> None:
    counts = {"ORTHANC1": 5, "ORTHANC2": 0, "ORTHANC-PROBE": 0}
    loads = load_book(counts, ENDPOINTS)
    loads.note_delivered("ORTHANC1", 3)
    assert loads.stored("ORTHANC1") == 8
    counts["ORTHANC1"] = 8

    loads.poll_once()

    assert loads.stored("ORTHANC1") == 8
