"""The Router with a rules document: rules + live state (loads, health, state) + pins."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from tests.support.datagen import make_instance
from tests.support.unitkit import ISSUE_EXAMPLE_RULES, FakeLoads

from dde.config import EndpointSettings, EndpointState, RoutingSettings
from dde.dicom.header import InstanceHeader, parse_header
from dde.routing.decision import NoRoute
from dde.routing.route import Route
from dde.routing.router import Origin, Router
from dde.routing.rules import RuleSet, parse_rules
from dde.store.intake import IngestView

RULES = ISSUE_EXAMPLE_RULES

PROBE = "ORTHANC-PROBE"


Loads = FakeLoads


@dataclass
class Health:
    down: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)

    def is_down(self, name: str) -> bool:
        return name in self.down or name in self.lost

    def failed_over(self) -> set[str]:
        return set(self.lost)

    def health(self, name: str) -> str:
        if name in self.unknown:
            return "unknown"
        return "down" if self.is_down(name) else "up"


@dataclass
class View(IngestView):
    """Pins by (study, group) and pending counts, as the ingest transaction would show."""

    pins: dict[tuple[str, str], str] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    asked: list[tuple[str, str | None]] = field(default_factory=list)

    def pin_for(self, study_instance_uid: str, group: str | None = None) -> str | None:
        self.asked.append((study_instance_uid, group))
        if group is None:
            return next((n for (s, _), n in sorted(self.pins.items())
                         if s == study_instance_uid), None)
        return self.pins.get((study_instance_uid, group))

    def queued_counts(self) -> dict[str, int]:
        return dict(self.queued)

    def commit(self, route: Route) -> None:
        for name in route.destinations + route.mirrors:
            self.queued[name] = self.queued.get(name, 0) + 1
        for study, name, group in route.all_pins():
            self.pins[(study, group)] = name


def ep(name: str, groups: Sequence[str] = ("storage",), **extra: object) -> EndpointSettings:
    return EndpointSettings(name=name, aet=name, groups=list(groups), **extra)  # type: ignore[arg-type]


def endpoints(**states: EndpointState) -> list[EndpointSettings]:
    return [ep("ORTHANC1", state=states.get("ORTHANC1", EndpointState.ENABLED)),
            ep("ORTHANC2", state=states.get("ORTHANC2", EndpointState.ENABLED)),
            ep(PROBE, ["probe"])]


def make_router(ruleset: RuleSet | None = None,
                configured: Sequence[EndpointSettings] | None = None,
                loads: dict[str, int] | None = None,
                health: Health | None = None) -> Router:
    configured = endpoints() if configured is None else configured
    if ruleset is None:
        ruleset = parse_rules(RULES, [e.name for e in configured],
                              {g for e in configured for g in e.groups})
    return Router(RoutingSettings(), configured, Loads(dict(loads or {})),
                  health if health is not None else Health(), ruleset)


def header(study: str | None = None, modality: str = "CT", patient_id: str = "P1",
           description: str | None = None) -> InstanceHeader:
    ds = make_instance(study_uid=study or generate_uid(), series_uid=generate_uid(), number=1,
                       rows=2, columns=2, modality=modality, patient_id=patient_id)
    if description is not None:
        ds.StudyDescription = description
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stream = io.BytesIO(buffer.getvalue())
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    return parse_header(stream.read(), str(meta.TransferSyntaxUID))


# -- rules ------------------------------------------------------------------------------

def test_mr_goes_to_orthanc2_only_plus_the_mirror_and_pins_nothing() -> None:
    router = make_router(loads={"ORTHANC1": 0, "ORTHANC2": 999})
    view = View()

    route = router.route(header(modality="MR"), view)

    assert route.rule == "mr-to-orthanc2"
    assert route.destinations == ("ORTHANC2",)
    assert route.mirrors == (PROBE,)
    assert route.all_pins() == ()
    assert not route.discard


def test_ct_takes_the_default_group_least_loaded_and_is_pinned() -> None:
    router = make_router(loads={"ORTHANC1": 10, "ORTHANC2": 3})
    study = generate_uid()

    route = router.route(header(study), View())

    assert route.rule == "default"
    assert route.destinations == ("ORTHANC2",)
    assert route.mirrors == (PROBE,)
    assert route.all_pins() == ((study, "ORTHANC2", "storage"),)
    assert "storage: new study" in route.reason


def test_research_copy_goes_to_orthanc1_plus_the_group_choice() -> None:
    router = make_router(loads={"ORTHANC1": 10, "ORTHANC2": 3})
    study = generate_uid()

    route = router.route(header(study, description="Brain perfusion"), View(),
                         Origin("RESEARCH_CT", "DYNAMIC_DICOM_MW", "10.0.0.9"))

    assert route.rule == "research-copy+default"
    assert route.destinations == ("ORTHANC1", "ORTHANC2")
    assert route.mirrors == (PROBE,)
    assert route.all_pins() == ((study, "ORTHANC2", "storage"),)


def test_research_copy_and_group_choice_on_the_same_endpoint_is_one_destination() -> None:
    router = make_router(loads={"ORTHANC1": 0, "ORTHANC2": 50})

    route = router.route(header(description="BRAIN"), View(), Origin("RESEARCH_CT"))

    assert route.destinations == ("ORTHANC1",)


def test_discard_is_a_route_with_no_destination_and_no_mirror() -> None:
    router = make_router()
    view = View()

    route = router.route(header(patient_id="PHANTOM"), view)

    assert route.discard
    assert route.destinations == () and route.mirrors == ()
    assert route.all_pins() == ()
    assert route.rule == "drop-tests"
    assert "drop-tests" in route.reason


def test_no_matching_rule_and_no_default_is_no_route() -> None:
    ruleset = parse_rules("rules:\n  - {name: mr, when: {Modality: MR}, route: [ORTHANC2]}\n")
    router = make_router(ruleset)

    with pytest.raises(NoRoute, match="no rule matches"):
        router.route(header(modality="CT"), View())


def test_the_calling_aet_of_the_origin_is_what_rules_see() -> None:
    router = make_router(loads={"ORTHANC1": 50, "ORTHANC2": 0})

    clinic = router.route(header(description="brain"), View(), Origin("CLINIC_CT"))

    assert clinic.rule == "default"
    assert clinic.destinations == ("ORTHANC2",)


# -- live state: draining, down, disabled, failed over ------------------------------------

@pytest.mark.parametrize("unavailable", ["draining", "down"])
def test_a_draining_or_down_member_gets_no_new_study(unavailable: str) -> None:
    states = {"ORTHANC2": EndpointState.DRAINING} if unavailable == "draining" else {}
    health = Health(down={"ORTHANC2"} if unavailable == "down" else set())
    router = make_router(configured=endpoints(**states), health=health,
                         loads={"ORTHANC1": 1000, "ORTHANC2": 0})
    view = View()

    for _ in range(3):
        study = generate_uid()
        route = router.route(header(study), view)
        view.commit(route)
        assert route.destinations == ("ORTHANC1",)
        assert route.all_pins() == ((study, "ORTHANC1", "storage"),)
        assert "ORTHANC2=0 unavailable" in route.reason


@pytest.mark.parametrize("unavailable", ["draining", "down"])
def test_a_draining_or_down_member_keeps_its_pinned_studies(unavailable: str) -> None:
    states = {"ORTHANC2": EndpointState.DRAINING} if unavailable == "draining" else {}
    health = Health(down={"ORTHANC2"} if unavailable == "down" else set())
    router = make_router(configured=endpoints(**states), health=health,
                         loads={"ORTHANC1": 0, "ORTHANC2": 1000})
    study = generate_uid()
    view = View(pins={(study, "storage"): "ORTHANC2"})

    route = router.route(header(study), view)

    assert route.destinations == ("ORTHANC2",)
    assert route.all_pins() == ()
    assert "pinned to ORTHANC2" in route.reason
    assert (study, "storage") in view.asked


def test_a_disabled_pinned_endpoint_loses_its_study() -> None:
    router = make_router(configured=endpoints(ORTHANC2=EndpointState.DISABLED),
                         loads={"ORTHANC1": 1000, "ORTHANC2": 0})
    study = generate_uid()
    view = View(pins={(study, "storage"): "ORTHANC2"})

    route = router.route(header(study), view)

    assert route.destinations == ("ORTHANC1",)
    assert route.all_pins() == ((study, "ORTHANC1", "storage"),)
    assert "pinned ORTHANC2" in route.reason and "moved" in route.reason


def test_a_failed_over_pinned_endpoint_loses_its_study() -> None:
    router = make_router(health=Health(lost={"ORTHANC2"}),
                         loads={"ORTHANC1": 1000, "ORTHANC2": 0})
    study = generate_uid()
    view = View(pins={(study, "storage"): "ORTHANC2"})

    route = router.route(header(study), view)
    view.commit(route)

    assert route.destinations == ("ORTHANC1",)
    assert route.all_pins() == ((study, "ORTHANC1", "storage"),)
    assert "pinned ORTHANC2 is unavailable past failover; study moved" in route.reason
    # the next instance of the study follows the new pin
    again = router.route(header(study), view)
    assert again.destinations == ("ORTHANC1",) and again.all_pins() == ()


def test_a_pin_to_an_endpoint_that_left_the_group_is_replaced() -> None:
    configured = [ep("ORTHANC1"), ep("ORTHANC2", ["archive"]), ep(PROBE, ["probe"])]
    router = make_router(configured=configured, loads={"ORTHANC1": 5})
    study = generate_uid()

    route = router.route(header(study), View(pins={(study, "storage"): "ORTHANC2"}))

    assert route.destinations == ("ORTHANC1",)
    assert route.all_pins() == ((study, "ORTHANC1", "storage"),)
    assert "left the group" in route.reason


def test_no_available_member_is_no_route() -> None:
    router = make_router(health=Health(down={"ORTHANC1", "ORTHANC2"}))

    with pytest.raises(NoRoute, match="no endpoint of group 'storage' is available"):
        router.route(header(), View())


def test_queued_work_counts_as_load_for_new_studies() -> None:
    router = make_router(loads={"ORTHANC1": 10, "ORTHANC2": 0})
    view = View(queued={"ORTHANC2": 11})

    route = router.route(header(), view)

    assert route.destinations == ("ORTHANC1",)


def test_round_robin_group_from_the_rules_keeps_its_state_between_instances() -> None:
    ruleset = parse_rules(
        "rules:\n  - {name: rr, route: {group: storage, strategy: round-robin}}\n"
        "mirror: [ORTHANC-PROBE]\n")
    configured = [*endpoints(), ep("ORTHANC3")]
    router = make_router(ruleset, configured, health=Health(down={"ORTHANC2"}))
    view = View()

    chosen = []
    for _ in range(4):
        route = router.route(header(), view)
        view.commit(route)
        chosen.append(route.destinations[0])

    assert chosen == ["ORTHANC1", "ORTHANC3", "ORTHANC1", "ORTHANC3"]


def test_weighted_group_uses_the_endpoint_weights() -> None:
    ruleset = parse_rules(
        "rules:\n  - {name: w, route: {group: storage, strategy: weighted}}\n")
    configured = [ep("ORTHANC1", weight=3.0), ep("ORTHANC2", weight=1.0)]
    router = make_router(ruleset, configured)

    chosen = [router.route(header(), View()).destinations[0] for _ in range(8)]

    assert chosen.count("ORTHANC1") == 6 and chosen.count("ORTHANC2") == 2


# -- endpoints the rules name that are not configured ----------------------------------------

def test_an_endpoint_the_rules_name_that_is_not_configured_is_skipped() -> None:
    ruleset = parse_rules(
        "rules:\n  - {name: mr, when: {Modality: MR}, route: [ORTHANC9, ORTHANC2]}\n"
        "mirror: [ORTHANC-PROBE, PROBE9]\n")
    router = make_router(ruleset)

    route = router.route(header(modality="MR"), View())

    assert route.destinations == ("ORTHANC2",)
    assert route.mirrors == (PROBE,)


def test_a_rule_left_with_no_configured_endpoint_is_no_route() -> None:
    ruleset = parse_rules(
        "rules:\n  - {name: mr, when: {Modality: MR}, route: [ORTHANC9]}\n"
        "mirror: [ORTHANC-PROBE]\n")
    router = make_router(ruleset)

    with pytest.raises(NoRoute, match="mr"):
        router.route(header(modality="MR"), View())


def test_a_group_without_members_is_no_route() -> None:
    ruleset = parse_rules("rules:\n  - {name: d, route: {group: archive}}\n")
    router = make_router(ruleset)

    with pytest.raises(NoRoute, match="group 'archive' has no endpoints"):
        router.route(header(), View())


def test_configure_swaps_rules_and_endpoints_live() -> None:
    router = make_router(loads={"ORTHANC1": 0, "ORTHANC2": 0})
    assert router.route(header(modality="MR"), View()).destinations == ("ORTHANC2",)

    configured = [*endpoints(), ep("ORTHANC3", ["storage"])]
    ruleset = parse_rules(
        "rules:\n  - {name: mr3, when: {Modality: MR}, route: [ORTHANC3]}\n"
        "mirror: [ORTHANC-PROBE]\n")
    router.configure(ruleset, configured)

    route = router.route(header(modality="MR"), View())
    assert route.rule == "mr3" and route.destinations == ("ORTHANC3",)
    assert router.ruleset is ruleset


# -- issue item 5: unknown health ---------------------------------------------------------

def unknown_world(unknown: set[str], loads: dict[str, int]) -> Router:
    configured = [ep("ORTHANC1"), ep("ORTHANC2"), ep(PROBE, "probe")]
    return Router(RoutingSettings(mirror=[PROBE]), configured, Loads(dict(loads)),
                  Health(unknown=unknown))


def test_a_member_of_unknown_health_gets_no_new_study_while_another_is_up() -> None:
    router = unknown_world({"ORTHANC2"}, {"ORTHANC1": 500, "ORTHANC2": 0})

    route = router.route(header(generate_uid()), View())

    assert route.destinations == ("ORTHANC1",)
    assert "ORTHANC2=0 health unknown" in route.reason


def test_when_no_member_is_known_up_the_unknown_ones_take_new_studies() -> None:
    router = unknown_world({"ORTHANC1", "ORTHANC2"}, {"ORTHANC1": 500, "ORTHANC2": 0})

    assert router.route(header(generate_uid()), View()).destinations == ("ORTHANC2",)


def test_a_down_member_does_not_count_as_known_up() -> None:
    configured = [ep("ORTHANC1"), ep("ORTHANC2"), ep(PROBE, "probe")]
    router = Router(RoutingSettings(mirror=[PROBE]), configured,
                    Loads({"ORTHANC1": 500, "ORTHANC2": 0}),
                    Health(down={"ORTHANC1"}, unknown={"ORTHANC2"}))

    assert router.route(header(generate_uid()), View()).destinations == ("ORTHANC2",)


def test_failover_target_is_never_an_unknown_member_while_one_is_up() -> None:
    router = unknown_world({"ORTHANC2"}, {"ORTHANC1": 500, "ORTHANC2": 0})

    assert router.choose_target("storage", {}) == "ORTHANC1"
