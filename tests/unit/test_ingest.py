"""The durable receive path: success only when spooled and committed; every failure named."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from tests.support.unitkit import endpoint, generated, load_book, split_part10

from dde.config import RoutingSettings
from dde.dicom import status as dimse
from dde.receiving.deliverability import Deliverability
from dde.receiving.ingest import IngestPipeline, IngestResult
from dde.routing.route import Route
from dde.routing.router import Router
from dde.store.capabilities import LearnedPair
from dde.store.diagnostics import backend_error
from dde.store.errors import LedgerError
from dde.store.intake import IngestRecords, IngestView, P
from dde.store.ledger import Ledger
from dde.store.records import NewInstance
from dde.store.spool import Spool, SpooledFile, SpoolError

ENDPOINTS = [endpoint("ORTHANC1"), endpoint("ORTHANC2"),
             endpoint("ORTHANC-PROBE", ["probe"])]


class Committed:
    """Records what ``on_committed`` was told."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, destinations: Iterable[str]) -> None:
        self.calls.append(list(destinations))


def make_router(endpoints: list[Any] | None = None) -> Router:
    return Router(RoutingSettings(), ENDPOINTS if endpoints is None else endpoints,
                  load_book())


def pipeline(ledger: Any, spool: Any, router: Router | None = None,
             on_committed: Callable[[Iterable[str]], None] | None = None) -> IngestPipeline:
    return IngestPipeline(ledger, spool, router or make_router(), on_committed or Committed())


def spool_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def rows(ledger: Ledger) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        ledger.diagnostics.count(t) for t in ("instances", "deliveries", "study_pins")
    )


def assert_nothing_left(ledger: Ledger, spool: Spool) -> None:
    assert rows(ledger) == (0, 0, 0)
    assert spool_files(spool.root) == []


def test_success_commits_rows_and_keeps_the_spool_file(ledger: Ledger, spool: Spool) -> None:
    committed = Committed()
    instance = generated()

    result = pipeline(ledger, spool, on_committed=committed).ingest(instance.incoming())

    assert result.status == dimse.SUCCESS and result.ok
    assert result.route is not None and result.instance_id is not None
    (record,) = ledger.operators.where(instance.sop_instance_uid)
    assert record.id == result.instance_id
    assert [(d.endpoint, d.role, d.state) for d in record.deliveries] == [
        ("ORTHANC1", "route", "pending"), ("ORTHANC-PROBE", "mirror", "pending"),
    ]
    assert record.study_instance_uid == instance.study_instance_uid
    assert [p.endpoint for p in ledger.diagnostics.pins()
            if p.study_instance_uid == instance.study_instance_uid] == ["ORTHANC1"]
    assert record.spool_path is not None
    path = spool.path_of(record.spool_path)
    assert spool_files(spool.root) == [path]
    syntax, dataset = split_part10(path.read_bytes())
    assert (syntax, dataset) == (instance.transfer_syntax_uid, instance.dataset)
    assert record.size == path.stat().st_size
    assert committed.calls == [["ORTHANC1", "ORTHANC-PROBE"]]


def test_instances_of_one_study_follow_their_pin(ledger: Ledger, spool: Spool) -> None:
    ingest = pipeline(ledger, spool).ingest
    study = generate_uid()
    other = generate_uid()

    first = ingest(generated(study).incoming())
    second = ingest(generated(other).incoming())  # ORTHANC1 is busier now: ORTHANC2
    third = ingest(generated(study).incoming())

    assert [r.route.destinations for r in (first, second, third)  # type: ignore[union-attr]
            ] == [("ORTHANC1",), ("ORTHANC2",), ("ORTHANC1",)]


def test_broken_dataset_is_cannot_understand_and_nothing_is_written(
        ledger: Ledger, spool: Spool) -> None:
    committed = Committed()
    instance = generated()
    truncated = instance.incoming(dataset=instance.dataset[:-10])

    result = pipeline(ledger, spool, on_committed=committed).ingest(truncated)

    assert result.status == dimse.CANNOT_UNDERSTAND
    assert "truncated" in result.detail
    assert_nothing_left(ledger, spool)
    assert committed.calls == []


def test_empty_dataset_is_cannot_understand(ledger: Ledger, spool: Spool) -> None:
    result = pipeline(ledger, spool).ingest(generated().incoming(dataset=b""))

    assert result.status == dimse.CANNOT_UNDERSTAND
    assert_nothing_left(ledger, spool)


def test_dataset_of_another_instance_than_the_request_is_refused(
        ledger: Ledger, spool: Spool) -> None:
    instance = generated()

    result = pipeline(ledger, spool).ingest(instance.incoming(sop_instance_uid=generate_uid()))

    assert result.status == dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert not result.ok
    assert_nothing_left(ledger, spool)


class FullSpool(Spool):
    def write(self, file_meta: bytes, dataset: bytes) -> SpooledFile:
        raise SpoolError("spool write failed: No space left on device")


def test_spool_failure_is_out_of_resources_and_no_row(ledger: Ledger, tmp_path: Path) -> None:
    committed = Committed()
    spool = FullSpool(tmp_path / "full")

    result = pipeline(ledger, spool, on_committed=committed).ingest(generated().incoming())

    assert result.status == dimse.OUT_OF_RESOURCES
    assert "No space left" in result.detail
    assert_nothing_left(ledger, spool)
    assert committed.calls == []


class BrokenIntake(IngestRecords):
    def ingest(self, instance: NewInstance,
               decide: Callable[[IngestView], P]) -> tuple[int, P]:
        raise LedgerError("database or disk is full")


class BrokenLedger(Ledger):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.intake = BrokenIntake(self.database)


def test_ledger_failure_is_out_of_resources_and_the_spool_file_removed(
        tmp_path: Path, spool: Spool) -> None:
    committed = Committed()
    ledger = BrokenLedger(tmp_path / "broken.sqlite3")
    try:
        result = pipeline(ledger, spool, on_committed=committed).ingest(generated().incoming())

        assert result.status == dimse.OUT_OF_RESOURCES
        assert_nothing_left(ledger, spool)
        assert committed.calls == []
    finally:
        ledger.close()


def test_locked_database_is_out_of_resources(ledger: Ledger, spool: Spool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A real SQLite error from inside the transaction (the router's decision runs there).
    def locked(*args: object) -> Route:
        raise backend_error("database is locked")

    router = make_router()
    monkeypatch.setattr(router, "route", locked)

    result = pipeline(ledger, spool, router).ingest(generated().incoming())

    assert result.status == dimse.OUT_OF_RESOURCES
    assert_nothing_left(ledger, spool)


def test_no_storage_endpoint_is_no_route_and_nothing_is_left(
        ledger: Ledger, spool: Spool) -> None:
    committed = Committed()
    router = make_router([endpoint("ORTHANC-PROBE", ["probe"])])

    result = pipeline(ledger, spool, router, committed).ingest(generated().incoming())

    assert result.status == dimse.CANNOT_UNDERSTAND_NO_ROUTE
    assert "no route" in result.detail
    assert_nothing_left(ledger, spool)
    assert committed.calls == []


def test_unexpected_error_before_spooling_is_out_of_resources(
        ledger: Ledger, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object) -> object:
        raise KeyError("bug")

    monkeypatch.setattr("dde.receiving.ingest.encode_file_meta", explode)

    result = pipeline(ledger, spool).ingest(generated().incoming())

    assert result.status == dimse.OUT_OF_RESOURCES
    assert_nothing_left(ledger, spool)


def test_unexpected_error_while_routing_is_out_of_resources(
        ledger: Ledger, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(*args: object) -> Route:
        raise ZeroDivisionError("bug in a rule")

    router = make_router()
    monkeypatch.setattr(router, "route", buggy)

    result = pipeline(ledger, spool, router).ingest(generated().incoming())

    assert result.status == dimse.OUT_OF_RESOURCES
    assert not result.ok
    assert rows(ledger) == (0, 0, 0)


def test_unexpected_error_while_routing_leaves_no_spool_file(
        ledger: Ledger, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance refused because of a bug must not leave an orphan spool file behind."""

    def buggy(*args: object) -> Route:
        raise ZeroDivisionError("bug in a rule")

    router = make_router()
    monkeypatch.setattr(router, "route", buggy)

    result = pipeline(ledger, spool, router).ingest(generated().incoming())

    assert result.status == dimse.OUT_OF_RESOURCES
    assert_nothing_left(ledger, spool)


def test_a_failing_wake_after_the_commit_still_acknowledges_a_durable_instance(
        ledger: Ledger, spool: Spool) -> None:
    """The wake only shortens the workers' poll: the instance is committed and its file
    durable, so the answer is success and the file stays (a failure status would make the
    sender send it again, and removing the file would lose an instance the ledger has)."""
    def explode(destinations: Iterable[str]) -> None:
        raise RuntimeError("wake failed")

    instance = generated()
    result = pipeline(ledger, spool, on_committed=explode).ingest(instance.incoming())

    assert result.status == dimse.SUCCESS
    (record,) = ledger.operators.where(instance.sop_instance_uid)
    assert {d.state for d in record.deliveries} == {"pending"}
    assert record.spool_path is not None and spool.path_of(record.spool_path).is_file()


@pytest.mark.parametrize("status", [dimse.OUT_OF_RESOURCES, dimse.CANNOT_UNDERSTAND,
                                    dimse.CANNOT_UNDERSTAND_NO_ROUTE])
def test_failure_results_are_not_ok(status: int) -> None:
    assert not IngestResult(status, "x").ok
    assert IngestResult(dimse.SUCCESS, "stored").ok



def test_a_discarded_instance_is_acknowledged_and_keeps_no_spool_file(
        ledger: Ledger, spool: Spool) -> None:
    from dde.routing.rules import parse_rules

    ruleset = parse_rules("rules:\n  - name: drop-all\n    action: discard\n",
                          [e.name for e in ENDPOINTS], {"storage", "probe"})
    router = Router(RoutingSettings(), ENDPOINTS, load_book(), ruleset=ruleset)
    committed = Committed()
    instance = generated()

    result = pipeline(ledger, spool, router, committed).ingest(instance.incoming())

    assert result.status == dimse.SUCCESS and result.route is not None
    assert result.route.discard
    (record,) = ledger.operators.where(instance.sop_instance_uid)
    assert record.deliveries == [] and record.spool_path is None
    assert spool_files(spool.root) == []
    assert committed.calls == []


def test_an_instance_a_destination_is_known_to_refuse_is_refused_and_nothing_kept(
        ledger: Ledger, spool: Spool) -> None:
    instance = generated()
    incoming = instance.incoming()
    ledger.capabilities.learn("ORTHANC-PROBE", [
        LearnedPair(incoming.sop_class_uid, syntax, False)
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)])
    honest = IngestPipeline(ledger, spool, make_router(), Committed(),
                            deliverability=Deliverability(ledger.capabilities, 60, True))

    result = honest.ingest(incoming)

    assert result.status == dimse.SOP_CLASS_NOT_SUPPORTED and result.reason == "undeliverable"
    assert result.detail == "undeliverable: ORTHANC-PROBE refuses CT Image Storage"
    assert_nothing_left(ledger, spool)
    # receiver.refuse_undeliverable off: acknowledged, the delivery fails in the ledger
    assert pipeline(ledger, spool).ingest(instance.incoming()).ok
