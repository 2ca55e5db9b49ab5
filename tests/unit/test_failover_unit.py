"""fail_over_once: a real Ledger, a Router over fake loads, a HealthMonitor on a fake clock."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from tests.support.datagen import make_instance
from tests.support.unitkit import FakeLoads

from dde.config import EndpointSettings, EndpointState, HealthSettings, RoutingSettings
from dde.delivery.failover import fail_over_once
from dde.dicom.header import InstanceHeader, parse_header
from dde.endpoints.health import HealthMonitor
from dde.routing.route import Route
from dde.routing.router import Router
from dde.routing.rules import parse_rules
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome, NewInstance
from dde.store.states import DeliveryState

PROBE = "ORTHANC-PROBE"
FAILOVER = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


Loads = FakeLoads


@dataclass
class World:
    ledger: Ledger
    router: Router
    health: HealthMonitor
    clock: Clock
    loads: Loads
    down: set[str]

    def receive(self, study: str) -> int:
        """Route and commit one instance of ``study`` as the receiver would."""
        header = make_header(study)
        record = NewInstance(
            sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid, study_instance_uid=study,
            series_instance_uid=header.series_instance_uid, patient_id=header.patient_id,
            accession_number=None, modality=header.modality, calling_aet="TEST_SCU",
            called_aet="DYNAMIC_DICOM_MW", source_ip="127.0.0.1",
            spool_path=f"{generate_uid()}.dcm", size=10, received_at=time.time())
        instance_id, _ = self.ledger.intake.ingest(
            record, lambda view: self.router.route(header, view))
        return instance_id

    def fail(self, name: str) -> None:
        """The endpoint stops answering; the next probe notices."""
        self.down.add(name)
        self.health.probe_once()

    def rows(self, instance_id: int) -> dict[str, tuple[str, str]]:
        rows = self.ledger.diagnostics.deliveries(instance_id=instance_id)
        return {d.endpoint: (d.role, d.state) for d in rows}

    def deliver(self, instance_id: int, endpoint: str) -> None:
        (row,) = self.ledger.diagnostics.deliveries(instance_id=instance_id, endpoint=endpoint)
        self.ledger.queue.record_outcomes([DeliveryOutcome(row.id, DeliveryState.DELIVERED)])

    def moved_events(self) -> list[tuple[str, str, int]]:
        return [(e[3], e[4], e[5]) for e in self.ledger.event_log.events() if e[2] == "study-moved"]


def make_header(study: str) -> InstanceHeader:
    ds = make_instance(study_uid=study, series_uid=generate_uid(), number=1, rows=2, columns=2)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stream = io.BytesIO(buffer.getvalue())
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    return parse_header(stream.read(), str(meta.TransferSyntaxUID))


def ep(name: str, group: str = "storage", **extra: object) -> EndpointSettings:
    return EndpointSettings(name=name, aet=name, groups=[group], **extra)  # type: ignore[arg-type]


@pytest.fixture
def world(ledger: Ledger) -> World:
    endpoints = [ep("ORTHANC1"), ep("ORTHANC2"), ep(PROBE, "probe")]
    clock = Clock()
    down: set[str] = set()
    settings = HealthSettings(interval_seconds=1.0, failure_threshold=1,
                              failover_after_seconds=FAILOVER)
    health = HealthMonitor(settings, "DDE_TEST",
                           probe=lambda e: "refused" if e.name in down else None, clock=clock)
    health.configure(settings, endpoints)
    health.probe_once()
    # ORTHANC2 holds more, so new studies go to ORTHANC1 while both are up
    loads = Loads({"ORTHANC1": 0, "ORTHANC2": 100})
    router = Router(RoutingSettings(mirror=[PROBE]), endpoints, loads, health)
    return World(ledger, router, health, clock, loads, down)


def test_after_failover_after_the_pending_rest_moves_to_the_other_member(world: World) -> None:
    study = generate_uid()
    first, second, third = (world.receive(study) for _ in range(3))
    assert world.ledger.operators.pin_for(study, "storage") == "ORTHANC1"
    world.deliver(first, "ORTHANC1")
    world.fail("ORTHANC1")
    world.clock.now += FAILOVER

    moved = fail_over_once(world.ledger, world.health, world.router)

    assert moved == 2
    assert world.rows(first) == {"ORTHANC1": ("route", "delivered"),
                                 PROBE: ("mirror", "pending")}
    for instance_id in (second, third):
        assert world.rows(instance_id) == {"ORTHANC2": ("route", "pending"),
                                           PROBE: ("mirror", "pending")}
    assert world.ledger.operators.pin_for(study, "storage") == "ORTHANC2"
    assert world.moved_events() == [("ORTHANC1", "ORTHANC2", 2)]
    assert world.ledger.operators.waiting_count("ORTHANC1") == 0
    # a later call finds nothing more to move
    assert fail_over_once(world.ledger, world.health, world.router) == 0
    assert world.moved_events() == [("ORTHANC1", "ORTHANC2", 2)]
    # and the next instance of the study follows the new pin
    fourth = world.receive(study)
    assert world.rows(fourth)["ORTHANC2"] == ("route", "pending")
    assert "ORTHANC1" not in world.rows(fourth)


def test_before_the_deadline_nothing_moves(world: World) -> None:
    study = generate_uid()
    instance_id = world.receive(study)
    world.fail("ORTHANC1")

    for elapsed in (0.0, 1.0, FAILOVER / 2, FAILOVER - 0.5):
        world.clock.now = 10_000.0 + elapsed
        assert fail_over_once(world.ledger, world.health, world.router) == 0

    assert world.rows(instance_id)["ORTHANC1"] == ("route", "pending")
    assert world.ledger.operators.pin_for(study, "storage") == "ORTHANC1"
    assert world.moved_events() == []
    # meanwhile the study keeps its pin (affinity), although ORTHANC1 is down
    later = world.receive(study)
    assert world.rows(later)["ORTHANC1"] == ("route", "pending")


def test_an_endpoint_that_came_back_in_time_keeps_its_studies(world: World) -> None:
    study = generate_uid()
    instance_id = world.receive(study)
    world.fail("ORTHANC1")
    world.clock.now += FAILOVER / 2
    world.down.clear()
    world.health.probe_once()
    world.clock.now += FAILOVER

    assert fail_over_once(world.ledger, world.health, world.router) == 0
    assert world.rows(instance_id)["ORTHANC1"] == ("route", "pending")


def test_delivered_deliveries_never_move(world: World) -> None:
    study = generate_uid()
    instances = [world.receive(study) for _ in range(3)]
    for instance_id in instances:
        world.deliver(instance_id, "ORTHANC1")
    world.fail("ORTHANC1")
    world.clock.now += FAILOVER * 10

    assert fail_over_once(world.ledger, world.health, world.router) == 0

    for instance_id in instances:
        assert world.rows(instance_id)["ORTHANC1"] == ("route", "delivered")
    assert world.moved_events() == []


def test_only_studies_pinned_to_the_lost_endpoint_move(world: World) -> None:
    on_one = generate_uid()
    one = world.receive(on_one)
    world.loads.counts = {"ORTHANC1": 100, "ORTHANC2": 0}
    on_two = generate_uid()
    two = world.receive(on_two)
    assert world.ledger.operators.pin_for(on_two, "storage") == "ORTHANC2"
    world.fail("ORTHANC1")
    world.clock.now += FAILOVER

    assert fail_over_once(world.ledger, world.health, world.router) == 1

    assert world.rows(one)["ORTHANC2"] == ("route", "pending")
    assert world.rows(two)["ORTHANC2"] == ("route", "pending")
    assert world.ledger.operators.pin_for(on_two, "storage") == "ORTHANC2"
    assert world.moved_events() == [("ORTHANC1", "ORTHANC2", 1)]


def test_nothing_moves_when_no_other_member_is_available(world: World) -> None:
    study = generate_uid()
    instance_id = world.receive(study)
    world.fail("ORTHANC1")
    world.fail("ORTHANC2")
    world.clock.now += FAILOVER

    assert fail_over_once(world.ledger, world.health, world.router) == 0

    assert world.rows(instance_id)["ORTHANC1"] == ("route", "pending")
    assert world.ledger.operators.pin_for(study, "storage") == "ORTHANC1"


def test_a_draining_member_does_not_take_moved_studies(world: World) -> None:
    endpoints = [ep("ORTHANC1"), ep("ORTHANC2", state=EndpointState.DRAINING),
                 ep("ORTHANC3"), ep(PROBE, "probe")]
    world.health.configure(world.health.settings, endpoints)
    world.health.probe_once()
    world.router.configure(world.router.ruleset, endpoints)
    world.loads.counts = {"ORTHANC1": 0, "ORTHANC2": 0, "ORTHANC3": 500}
    study = generate_uid()
    instance_id = world.receive(study)
    world.fail("ORTHANC1")
    world.clock.now += FAILOVER

    assert fail_over_once(world.ledger, world.health, world.router) == 1

    assert "ORTHANC3" in world.rows(instance_id)
    assert world.ledger.operators.pin_for(study, "storage") == "ORTHANC3"


WEIGHTED_RULES = """rules:
  - name: default
    route: {group: storage, strategy: weighted}
mirror: [ORTHANC-PROBE]
"""


def test_the_moved_rest_goes_where_the_groups_strategy_says(world: World) -> None:
    # ORTHANC3 holds 50 per unit of weight, ORTHANC2 10 (least-loaded would pick ORTHANC2);
    # the group's rules say weighted, and ORTHANC3 weighs ten times as much: ORTHANC3.
    endpoints = [ep("ORTHANC1"), ep("ORTHANC2"), ep("ORTHANC3", weight=10.0), ep(PROBE, "probe")]
    world.health.configure(world.health.settings, endpoints)
    world.health.probe_once()
    world.loads.counts.update({"ORTHANC2": 10, "ORTHANC3": 500})
    names = [e.name for e in endpoints]
    world.router.configure(parse_rules(WEIGHTED_RULES, names, {"storage", "probe"}), endpoints)
    study = generate_uid()
    world.ledger.intake.ingest(
        instance_of(study), lambda view: Route("default", ("ORTHANC1",), (PROBE,),
                                               pin=(study, "ORTHANC1", "storage")))
    world.fail("ORTHANC1")
    world.clock.now += FAILOVER

    assert fail_over_once(world.ledger, world.health, world.router) == 1

    assert world.ledger.operators.pin_for(study, "storage") == "ORTHANC3"


def instance_of(study: str) -> NewInstance:
    header = make_header(study)
    return NewInstance(
        sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=header.transfer_syntax_uid, study_instance_uid=study,
        series_instance_uid=None, patient_id=None, accession_number=None, modality="CT",
        calling_aet="TEST_SCU", called_aet="DYNAMIC_DICOM_MW", source_ip="127.0.0.1",
        spool_path=f"{generate_uid()}.dcm", size=10, received_at=time.time())
