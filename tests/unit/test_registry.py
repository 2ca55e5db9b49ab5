"""Endpoint operations (add, drain/enable/disable, remove) over a ConfigStore and a Ledger."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import generate_uid

from dde.config import EndpointSettings, EndpointState, Home, Settings
from dde.config_store import ConfigStore
from dde.endpoints.registry import (
    EndpointError,
    add_endpoint,
    describe,
    remove_endpoint,
    set_state,
    update_endpoint,
)
from dde.routing.route import Route
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome, NewInstance
from dde.store.states import DeliveryState
from dde.store.status_board import STATUS_FRESH_SECONDS, PublishedStatus

PROBE = "ORTHANC-PROBE"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_AE_TITLE", "DDE_DICOM_PORT", "DDE_DICOM_HOST", "DDE_HOME"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    store = ConfigStore(Home(tmp_path / "home"))
    store.settings()
    return store


def reopened(store: ConfigStore) -> Settings:
    """The settings as a fresh process would read them from disk."""
    return ConfigStore(store.home).settings()


def instance(study: str | None) -> NewInstance:
    return NewInstance(
        sop_instance_uid=generate_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", study_instance_uid=study,
        series_instance_uid=None, patient_id="P1", accession_number=None, modality="CT",
        calling_aet="TEST_SCU", called_aet="DYNAMIC_DICOM_MW", source_ip="127.0.0.1",
        spool_path=f"{generate_uid()}.dcm", size=10, received_at=time.time())


def ingest(ledger: Ledger, study: str | None, destinations: tuple[str, ...],
           mirrors: tuple[str, ...] = (PROBE,), pin: str | None = None) -> int:
    route = Route("default", destinations, mirrors,
                  pins=((study, pin, "storage"),) if pin and study else ())
    instance_id, _ = ledger.intake.ingest(instance(study), lambda view: route)
    return instance_id


def deliveries(ledger: Ledger, instance_id: int) -> list[tuple[str, str, str, int]]:
    rows = ledger.diagnostics.deliveries(instance_id=instance_id)
    return sorted((d.endpoint, d.role, d.state, d.attempts) for d in rows)


def delivery_id(ledger: Ledger, instance_id: int, endpoint: str) -> int:
    return ledger.diagnostics.deliveries(instance_id=instance_id, endpoint=endpoint)[0].id


def set_outcome(ledger: Ledger, instance_id: int, endpoint: str, state: DeliveryState) -> None:
    ledger.queue.record_outcomes([DeliveryOutcome(delivery_id(ledger, instance_id, endpoint), state,
                                            error="refused" if state.value == "failed" else None)])


def ep(name: str, groups: tuple[str, ...] = ("storage",), **extra: Any) -> EndpointSettings:
    return EndpointSettings(name=name, aet=name, port=4300, groups=list(groups), **extra)


# -- add, drain, enable, disable ---------------------------------------------------------

def test_add_persists_the_endpoint(store: ConfigStore) -> None:
    returned = add_endpoint(store, ep("ORTHANC3", url="http://127.0.0.1:8045", weight=2.0))

    assert returned.endpoint("ORTHANC3") is not None
    added = reopened(store).endpoint("ORTHANC3")
    assert added is not None
    assert (added.aet, added.port, added.url, added.groups, added.weight, added.state) == (
        "ORTHANC3", 4300, "http://127.0.0.1:8045", ["storage"], 2.0, EndpointState.ENABLED)


def test_add_refuses_a_duplicate_name_and_changes_nothing(store: ConfigStore) -> None:
    before = store.path.read_bytes()

    with pytest.raises(EndpointError, match="'ORTHANC1' exists already"):
        add_endpoint(store, ep("ORTHANC1", groups=("other",)))

    assert store.path.read_bytes() == before


@pytest.mark.parametrize("state", [EndpointState.DRAINING, EndpointState.DISABLED,
                                   EndpointState.ENABLED])
def test_set_state_is_persisted(store: ConfigStore, state: EndpointState) -> None:
    set_state(store, "ORTHANC2", EndpointState.DISABLED)

    set_state(store, "ORTHANC2", state)

    settings = reopened(store)
    changed = settings.endpoint("ORTHANC2")
    assert changed is not None and changed.state is state
    untouched = settings.endpoint("ORTHANC1")
    assert untouched is not None and untouched.state is EndpointState.ENABLED


def test_drain_then_enable_round_trip(store: ConfigStore) -> None:
    set_state(store, "ORTHANC1", EndpointState.DRAINING)
    assert reopened(store).endpoint("ORTHANC1").state is EndpointState.DRAINING  # type: ignore[union-attr]

    set_state(store, "ORTHANC1", EndpointState.ENABLED)
    assert reopened(store).endpoint("ORTHANC1").state is EndpointState.ENABLED  # type: ignore[union-attr]


def test_an_operation_on_an_unknown_endpoint_names_the_known_ones(store: ConfigStore) -> None:
    with pytest.raises(EndpointError, match="no endpoint named 'ORTHANC9'.*ORTHANC1"):
        set_state(store, "ORTHANC9", EndpointState.DRAINING)


def test_update_endpoint_validates_the_new_fields(store: ConfigStore) -> None:
    before = store.path.read_bytes()

    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError
        update_endpoint(store, "ORTHANC1", weight=0)

    assert store.path.read_bytes() == before
    update_endpoint(store, "ORTHANC1", weight=4.0, groups=["storage", "fast"])
    changed = reopened(store).endpoint("ORTHANC1")
    assert changed is not None and changed.weight == 4.0 and changed.groups == ["storage",
                                                                                "fast"]


# -- remove ----------------------------------------------------------------------------------

def test_remove_is_refused_while_deliveries_wait(store: ConfigStore, ledger: Ledger) -> None:
    study = generate_uid()
    pending = ingest(ledger, study, ("ORTHANC2",), pin="ORTHANC2")
    failed = ingest(ledger, study, ("ORTHANC2",))
    set_outcome(ledger, failed, "ORTHANC2", DeliveryState.FAILED)
    before = store.path.read_bytes()

    with pytest.raises(EndpointError) as caught:
        remove_endpoint(store, ledger, "ORTHANC2")

    message = str(caught.value)
    assert "2 deliveries" in message and "ORTHANC2" in message and "--force" in message
    assert store.path.read_bytes() == before
    assert reopened(store).endpoint("ORTHANC2") is not None
    assert deliveries(ledger, pending)[1][:3] == ("ORTHANC2", "route", "pending")
    assert ledger.operators.pin_for(study, "storage") == "ORTHANC2"


def test_remove_force_redirects_to_the_other_member_and_repins(store: ConfigStore,
                                                                ledger: Ledger) -> None:
    study = generate_uid()
    other_study = generate_uid()
    first = ingest(ledger, study, ("ORTHANC2",), pin="ORTHANC2")
    second = ingest(ledger, study, ("ORTHANC2",))
    failed = ingest(ledger, study, ("ORTHANC2",))
    set_outcome(ledger, failed, "ORTHANC2", DeliveryState.FAILED)
    delivered = ingest(ledger, study, ("ORTHANC2",))
    set_outcome(ledger, delivered, "ORTHANC2", DeliveryState.DELIVERED)
    both = ingest(ledger, other_study, ("ORTHANC1", "ORTHANC2"))  # e.g. a research copy
    untouched = ingest(ledger, other_study, ("ORTHANC1",), pin="ORTHANC1")

    settings, redirected, target = remove_endpoint(store, ledger, "ORTHANC2", force=True)

    assert target == "ORTHANC1"
    assert redirected == 3
    assert settings.endpoint("ORTHANC2") is None
    assert reopened(store).endpoint("ORTHANC2") is None
    for moved in (first, second, failed):
        assert deliveries(ledger, moved) == [("ORTHANC-PROBE", "mirror", "pending", 0),
                                             ("ORTHANC1", "route", "pending", 0)]
    # what was delivered stays in the history as it happened
    assert deliveries(ledger, delivered)[1][:3] == ("ORTHANC2", "route", "delivered")
    # an instance already on its way to the target gets no second copy
    assert deliveries(ledger, both) == [("ORTHANC-PROBE", "mirror", "pending", 0),
                                        ("ORTHANC1", "route", "pending", 0)]
    assert deliveries(ledger, untouched)[1][0] == "ORTHANC1"
    assert ledger.operators.waiting_count("ORTHANC2") == 0
    assert ledger.operators.pin_for(study, "storage") == "ORTHANC1"
    assert ledger.operators.pin_for(other_study, "storage") == "ORTHANC1"
    kinds = [(e[2], e[3], e[4], e[5]) for e in ledger.event_log.events()]
    assert ("endpoint-redirected", "ORTHANC2", "ORTHANC1", 3) in kinds


def test_remove_force_picks_the_least_queued_enabled_member(store: ConfigStore,
                                                             ledger: Ledger) -> None:
    add_endpoint(store, ep("ORTHANC3"))
    add_endpoint(store, ep("ORTHANC4"))
    set_state(store, "ORTHANC4", EndpointState.DRAINING)
    for _ in range(2):
        ingest(ledger, generate_uid(), ("ORTHANC1",))
    ingest(ledger, generate_uid(), ("ORTHANC3",))
    waiting = ingest(ledger, generate_uid(), ("ORTHANC2",))

    _, redirected, target = remove_endpoint(store, ledger, "ORTHANC2", force=True)

    assert (redirected, target) == (1, "ORTHANC3")  # 1 queued < 2; ORTHANC4 drains
    assert deliveries(ledger, waiting)[1][0] == "ORTHANC3"


def test_remove_force_picks_the_member_the_groups_strategy_picks(store: ConfigStore,
                                                                   ledger: Ledger) -> None:
    # ORTHANC3 has more queued than ORTHANC1 (least-loaded would pick ORTHANC1), but the
    # rules route the group with `weighted` and ORTHANC3 weighs ten times as much.
    add_endpoint(store, ep("ORTHANC3", weight=10.0))
    store.apply_rules("rules:\n  - name: default\n    route: {group: storage, strategy: weighted}\n"
                      f"mirror: [{PROBE}]\n")
    ingest(ledger, generate_uid(), ("ORTHANC3",))
    waiting = ingest(ledger, generate_uid(), ("ORTHANC2",))

    _, redirected, target = remove_endpoint(store, ledger, "ORTHANC2", force=True)

    assert (redirected, target) == (1, "ORTHANC3")
    assert deliveries(ledger, waiting)[1][0] == "ORTHANC3"


def test_remove_force_without_another_enabled_member_is_refused(store: ConfigStore,
                                                                ledger: Ledger) -> None:
    set_state(store, "ORTHANC1", EndpointState.DRAINING)
    waiting = ingest(ledger, generate_uid(), ("ORTHANC2",))

    with pytest.raises(EndpointError, match="no other enabled endpoint"):
        remove_endpoint(store, ledger, "ORTHANC2", force=True)

    assert reopened(store).endpoint("ORTHANC2") is not None
    assert deliveries(ledger, waiting)[1][:3] == ("ORTHANC2", "route", "pending")


def test_remove_force_of_an_endpoint_the_rules_name_changes_nothing(store: ConfigStore,
                                                                    ledger: Ledger) -> None:
    store.apply_rules("rules:\n  - {name: mr, when: {Modality: MR}, route: [ORTHANC2]}\n"
                      "  - {name: default, route: {group: storage}}\n")
    waiting = ingest(ledger, generate_uid(), ("ORTHANC2",), pin="ORTHANC2")

    with pytest.raises(EndpointError, match="rules"):
        remove_endpoint(store, ledger, "ORTHANC2", force=True)

    assert reopened(store).endpoint("ORTHANC2") is not None
    assert deliveries(ledger, waiting)[1][:3] == ("ORTHANC2", "route", "pending")
    assert ledger.event_log.events() == []


def test_remove_with_nothing_waiting(store: ConfigStore, ledger: Ledger) -> None:
    done = ingest(ledger, generate_uid(), ("ORTHANC2",), mirrors=())
    set_outcome(ledger, done, "ORTHANC2", DeliveryState.DELIVERED)

    settings, redirected, target = remove_endpoint(store, ledger, "ORTHANC2")

    assert (redirected, target) == (0, None)
    assert settings.endpoint("ORTHANC2") is None
    assert reopened(store).endpoint("ORTHANC2") is None
    assert deliveries(ledger, done) == [("ORTHANC2", "route", "delivered", 1)]


def test_remove_without_a_ledger(store: ConfigStore) -> None:
    settings, redirected, target = remove_endpoint(store, None, "ORTHANC1")

    assert (redirected, target) == (0, None)
    assert [e.name for e in reopened(store).endpoints] == ["ORTHANC2", PROBE]


def test_remove_of_an_unknown_endpoint(store: ConfigStore, ledger: Ledger) -> None:
    with pytest.raises(EndpointError, match="no endpoint named"):
        remove_endpoint(store, ledger, "NOPE", force=True)


# -- describe ---------------------------------------------------------------------------------

def publish(ledger: Ledger, health: str = "down") -> None:
    rows = [("ORTHANC1", "up", "closed", None, None, 12),
            ("ORTHANC2", health, "open" if health == "down" else "closed",
             time.time() - 30 if health == "down" else None, "refused", 3)]
    ledger.status_board.publish([PublishedStatus(*row) for row in rows])


def test_describe_shows_configuration_published_status_and_counts(store: ConfigStore,
                                                                  ledger: Ledger) -> None:
    publish(ledger)
    ingest(ledger, generate_uid(), ("ORTHANC2",))
    failed = ingest(ledger, generate_uid(), ("ORTHANC2",))
    set_outcome(ledger, failed, "ORTHANC2", DeliveryState.FAILED)

    rows = {row["name"]: row for row in describe(store.settings(), ledger)}

    assert list(rows) == ["ORTHANC1", "ORTHANC2", PROBE]
    o2 = rows["ORTHANC2"]
    assert (o2["health"], o2["breaker"], o2["load"], o2["last_error"]) == (
        "down", "open", 3, "refused")
    assert (o2["queued"], o2["failed"], o2["delivered"]) == (1, 1, 0)
    assert (o2["state"], o2["groups"], o2["kind"], o2["aet"]) == (
        "enabled", ["storage"], "dicom", "ORTHANC2")
    assert rows["ORTHANC1"]["health"] == "up" and rows["ORTHANC1"]["load"] == 12
    assert rows[PROBE]["health"] == "unknown"  # nothing published for it
    assert rows[PROBE]["queued"] == 2


def test_describe_shows_unknown_when_the_published_status_is_stale(
        store: ConfigStore, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    published_at = time.time() - STATUS_FRESH_SECONDS - 5
    with monkeypatch.context() as patch:
        patch.setattr("dde.store.status_board.time", SimpleNamespace(time=lambda: published_at))
        publish(ledger)
    assert ledger.status_board.read() == {}  # stale: shown as unknown

    rows = {row["name"]: row for row in describe(store.settings(), ledger)}

    for name in ("ORTHANC1", "ORTHANC2"):
        assert rows[name]["health"] == "unknown"
        assert rows[name]["load"] is None and rows[name]["breaker"] is None


def test_describe_without_a_ledger(store: ConfigStore) -> None:
    rows = describe(store.settings(), None)

    assert [r["health"] for r in rows] == ["unknown"] * 3
    assert [r["queued"] for r in rows] == [0] * 3
