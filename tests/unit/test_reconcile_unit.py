"""Probe reconciliation over fake Orthanc REST APIs (httpx.MockTransport), real Ledger/Spool."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from tests.support.datagen import make_instance
from tests.support.unitkit import FakeLoads

from dde.config import EndpointSettings, RoutingSettings, Settings
from dde.receiving.ingest import IngestPipeline
from dde.reconcile import ReconcileError, reconcile
from dde.routing.route import Route
from dde.routing.router import Router
from dde.routing.rules import default_ruleset, parse_rules
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.records import NewInstance
from dde.store.spool import Spool

PROBE = "ORTHANC-PROBE"
URLS = {"ORTHANC1": "http://pacs1:8042", "ORTHANC2": "http://pacs2:8043",
        PROBE: "http://probe:8044"}


@dataclass
class FakeOrthanc:
    ids: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    broken_files: set[str] = field(default_factory=set)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/instances":
            since = int(request.url.params.get("since", "0"))
            limit = int(request.url.params.get("limit", "0"))
            page = self.ids[since:since + limit] if limit else self.ids[since:]
            return httpx.Response(200, content=json.dumps(page).encode(),
                                  headers={"content-type": "application/json"})
        if path.startswith("/instances/") and path.endswith("/file"):
            instance_id = path.split("/")[2]
            if instance_id in self.broken_files:
                return httpx.Response(500)
            if instance_id not in self.files:
                return httpx.Response(404)
            return httpx.Response(200, content=self.files[instance_id])
        return httpx.Response(404)

    def listing_pages(self) -> list[tuple[int, int]]:
        return [(int(r.url.params["since"]), int(r.url.params["limit"]))
                for r in self.requests if r.url.path == "/instances"]

    def fetched(self) -> list[str]:
        return [r.url.path.split("/")[2] for r in self.requests
                if r.url.path.endswith("/file")]


def factory(orthancs: dict[str, FakeOrthanc]) -> Callable[[EndpointSettings], httpx.Client]:
    def make(endpoint: EndpointSettings) -> httpx.Client:
        fake = orthancs[endpoint.name]

        def handler(request: httpx.Request) -> httpx.Response:
            assert str(request.url).startswith(URLS[endpoint.name])
            return fake.handle(request)

        return httpx.Client(transport=httpx.MockTransport(handler))
    return make


def through(ledger: Ledger, spool: Spool) -> IngestPipeline:
    """The ingest pipeline a repair goes through (its copies have a fixed route)."""
    router = Router(RoutingSettings(), settings().endpoints, FakeLoads())
    return IngestPipeline(ledger, spool, router, lambda destinations: None)


def repairing(ledger: Ledger, spool: Spool) -> dict[str, Any]:
    return {"ledger": ledger, "pipeline": through(ledger, spool), "repair": True}


def settings(names: tuple[str, ...] = ("ORTHANC1", "ORTHANC2", PROBE)) -> Settings:
    return Settings(endpoints=[
        EndpointSettings(name=n, aet=n, url=URLS[n],
                         groups=["probe" if n == PROBE else "storage"]) for n in names])


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


def part10(study: str) -> bytes:
    ds = make_instance(study_uid=study, series_uid=generate_uid(), number=1, rows=4, columns=4,
                       patient_id="RECON-1")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset_part(raw: bytes) -> tuple[bytes, str, str]:
    """(dataset bytes after the file meta, SOP instance UID, transfer syntax)."""
    stream = io.BytesIO(raw)
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    return stream.read(), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID)


RULESET = default_ruleset(mirror=[PROBE])


def test_counts_differences_across_more_than_one_page() -> None:
    one = ids("a", 1500)
    two = ids("b", 1000)  # exactly one page: the listing must ask once more and get []
    probe_held = one[:1497] + two[:999] + ["x-1", "x-2"]
    orthancs = {"ORTHANC1": FakeOrthanc(one), "ORTHANC2": FakeOrthanc(two),
                PROBE: FakeOrthanc(probe_held)}

    report = reconcile(settings(), RULESET, client_factory=factory(orthancs))

    assert report.storage == {"ORTHANC1": 1500, "ORTHANC2": 1000}
    assert report.probe == {PROBE: 2498}
    assert report.missing_in_probe == {PROBE: 4}
    assert report.only_in_probe == {PROBE: 2}
    assert not report.consistent
    assert report.repaired == 0 and report.repair_failed == 0
    assert orthancs["ORTHANC1"].listing_pages() == [(0, 1000), (1000, 1000)]
    assert orthancs["ORTHANC2"].listing_pages() == [(0, 1000), (1000, 1000)]
    assert orthancs[PROBE].listing_pages() == [(0, 1000), (1000, 1000), (2000, 1000)]
    # without --repair not a single file is read
    assert all(not fake.fetched() for fake in orthancs.values())
    data = report.as_dict()
    assert data["consistent"] is False and data["missing_in_probe"] == {PROBE: 4}


def test_a_consistent_probe() -> None:
    held = ids("a", 2100)
    orthancs = {"ORTHANC1": FakeOrthanc(held[:1200]), "ORTHANC2": FakeOrthanc(held[1200:]),
                PROBE: FakeOrthanc(list(reversed(held)))}

    report = reconcile(settings(), RULESET, client_factory=factory(orthancs))

    assert report.consistent
    assert report.missing_in_probe == {PROBE: 0} and report.only_in_probe == {PROBE: 0}
    assert report.as_dict()["consistent"] is True


def test_an_instance_on_both_storages_counts_once() -> None:
    shared = ids("s", 3)
    orthancs = {"ORTHANC1": FakeOrthanc(shared), "ORTHANC2": FakeOrthanc(shared),
                PROBE: FakeOrthanc(shared[:2])}

    report = reconcile(settings(), RULESET, client_factory=factory(orthancs))

    assert report.missing_in_probe == {PROBE: 1}


def test_repair_fetches_only_the_missing_files_and_queues_one_copy_each(
        ledger: Ledger, spool: Spool) -> None:
    one = ids("a", 1200)
    two = ids("b", 30)
    missing = {one[5]: part10(generate_uid()), one[1100]: part10(generate_uid()),
               two[7]: part10(generate_uid())}
    orthancs = {
        "ORTHANC1": FakeOrthanc(one, files={k: v for k, v in missing.items()
                                            if k.startswith("a")}),
        "ORTHANC2": FakeOrthanc(two, files={k: v for k, v in missing.items()
                                            if k.startswith("b")}),
        PROBE: FakeOrthanc([i for i in one + two if i not in missing]),
    }

    report = reconcile(settings(), RULESET, **repairing(ledger, spool),
                       client_factory=factory(orthancs))

    assert report.missing_in_probe == {PROBE: 3}
    assert (report.repaired, report.repair_failed) == (3, 0)
    assert sorted(orthancs["ORTHANC1"].fetched()) == sorted([one[5], one[1100]])
    assert orthancs["ORTHANC2"].fetched() == [two[7]]
    assert orthancs[PROBE].fetched() == []

    stored = {i.id: i for i in ledger.diagnostics.instances()}
    rows = [(i.sop_instance_uid, i.spool_path, i.calling_aet, i.patient_id, d.endpoint, d.role,
             d.state) for d in ledger.diagnostics.deliveries() for i in [stored[d.instance_id]]]
    assert len(rows) == 3
    expected = {dataset_part(raw)[1]: (raw, source) for key, raw in missing.items()
                for source in [("ORTHANC1" if key.startswith("a") else "ORTHANC2")]}
    for sop, spool_path, calling, patient, endpoint, role, state in rows:
        assert (endpoint, role, state) == (PROBE, "mirror", "pending")
        raw, source = expected[sop]
        assert calling == source
        assert patient == "RECON-1"
        written = spool.path_of(spool_path).read_bytes()
        # the dataset is the storage's, byte for byte, behind a rebuilt file meta
        assert dataset_part(written)[0] == dataset_part(raw)[0]
        assert dataset_part(written)[1:] == dataset_part(raw)[1:]
    assert ledger.queue.queued_counts() == {PROBE: 3}


def test_repair_counts_a_file_the_storage_cannot_give(ledger: Ledger, spool: Spool) -> None:
    stored = ids("a", 3)
    orthancs = {"ORTHANC1": FakeOrthanc(stored, files={stored[0]: part10(generate_uid()),
                                                       stored[2]: b"not dicom at all"},
                                        broken_files={stored[1]}),
                "ORTHANC2": FakeOrthanc([]), PROBE: FakeOrthanc([])}

    report = reconcile(settings(), RULESET, **repairing(ledger, spool),
                       client_factory=factory(orthancs))

    assert (report.repaired, report.repair_failed) == (1, 2)
    assert ledger.queue.queued_counts() == {PROBE: 1}


def test_a_repair_the_ledger_refuses_leaves_no_spool_file(ledger: Ledger, spool: Spool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    stored = ids("a", 1)
    orthancs = {"ORTHANC1": FakeOrthanc(stored, files={stored[0]: part10(generate_uid())}),
                "ORTHANC2": FakeOrthanc([]), PROBE: FakeOrthanc([])}

    def full(*args: object) -> None:
        raise LedgerError("database or disk is full")

    monkeypatch.setattr(ledger.intake, "ingest", full)
    report = reconcile(settings(), RULESET, ledger=ledger, pipeline=through(ledger, spool),
                       repair=True, client_factory=factory(orthancs))

    assert (report.repaired, report.repair_failed) == (0, 1)
    assert [p for p in spool.root.rglob("*") if p.is_file()] == []


def test_repair_without_ledger_or_spool_is_an_error() -> None:
    orthancs = {"ORTHANC1": FakeOrthanc(["a"]), "ORTHANC2": FakeOrthanc([]),
                PROBE: FakeOrthanc([])}

    with pytest.raises(ReconcileError, match="ledger and spool"):
        reconcile(settings(), RULESET, repair=True, client_factory=factory(orthancs))


def test_repair_is_refused_while_a_rule_deidentifies() -> None:
    rules = parse_rules(f"""\
rules:
  - name: research
    deidentify: {{salt_secret: research}}
    route: [ORTHANC2]
    continue: true
  - name: default
    route: [ORTHANC1]
mirror: [{PROBE}]
""")
    with pytest.raises(ReconcileError, match="de-identifies"):
        reconcile(settings(), rules, repair=True, client_factory=factory({}))


def test_repair_with_nothing_missing_needs_nothing(ledger: Ledger, spool: Spool) -> None:
    orthancs = {"ORTHANC1": FakeOrthanc(["a"]), "ORTHANC2": FakeOrthanc([]),
                PROBE: FakeOrthanc(["a"])}

    report = reconcile(settings(), RULESET, **repairing(ledger, spool),
                       client_factory=factory(orthancs))

    assert report.repaired == 0 and ledger.queue.queued_counts() == {}


def test_no_probe_is_an_error() -> None:
    with pytest.raises(ReconcileError, match="no probe"):
        reconcile(settings(), default_ruleset(mirror=[]), client_factory=factory({}))


def test_an_endpoint_without_url_is_an_error() -> None:
    config = settings()
    config.endpoints[1] = EndpointSettings(name="ORTHANC2", aet="ORTHANC2", groups=["storage"])

    with pytest.raises(ReconcileError, match="ORTHANC2"):
        reconcile(config, RULESET, client_factory=factory({}))


def test_a_listing_that_fails_is_an_error_naming_the_endpoint() -> None:
    def make(endpoint: EndpointSettings) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            if endpoint.name == "ORTHANC2":
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json=[])
        return httpx.Client(transport=httpx.MockTransport(handler))

    with pytest.raises(ReconcileError, match="cannot list ORTHANC2"):
        reconcile(settings(), RULESET, client_factory=make)


def test_a_listing_that_is_not_a_list_is_an_error() -> None:
    def make(endpoint: EndpointSettings) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(
            lambda request: httpx.Response(200, json={"error": "?"})))

    with pytest.raises(ReconcileError, match="did not answer a list"):
        reconcile(settings(), RULESET, client_factory=make)


def test_a_second_repair_does_not_queue_a_copy_that_is_still_waiting(
        ledger: Ledger, spool: Spool) -> None:
    # Periodic reconciliation with repair (config) runs again while the probe is still down:
    # the copies queued last time are still pending, and must not be queued again each run.
    stored = ids("a", 4)
    orthancs = {"ORTHANC1": FakeOrthanc(stored, files={i: part10(generate_uid())
                                                       for i in stored[:2]}),
                "ORTHANC2": FakeOrthanc([]), PROBE: FakeOrthanc(stored[2:])}
    first = reconcile(settings(), RULESET, **repairing(ledger, spool),
                      client_factory=factory(orthancs))
    assert first.repaired == 2

    reconcile(settings(), RULESET, **repairing(ledger, spool),
              client_factory=factory(orthancs))

    assert ledger.queue.queued_counts() == {PROBE: 2}
    assert ledger.operators.waiting_count(PROBE) == 2


def test_repair_does_not_duplicate_a_mirror_delivery_the_router_still_owes(
        ledger: Ledger, spool: Spool) -> None:
    # The router received the instance, delivered it to ORTHANC1, and its mirror copy to the
    # probe is still pending (the probe is slow or down): the copy is not missing, it is late.
    raw = part10(generate_uid())
    dataset, sop_instance_uid, syntax = dataset_part(raw)
    record = NewInstance(
        sop_instance_uid=sop_instance_uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid=syntax, study_instance_uid=None, series_instance_uid=None,
        patient_id="RECON-1", accession_number=None, modality="CT", calling_aet="TEST_SCU",
        called_aet="DYNAMIC_DICOM_MW", source_ip="127.0.0.1", spool_path="x/y.dcm",
        size=len(raw), received_at=time.time())
    ledger.intake.ingest(record, lambda view: Route("default", ("ORTHANC1",), (PROBE,)))
    orthancs = {"ORTHANC1": FakeOrthanc(["a"], files={"a": raw}),
                "ORTHANC2": FakeOrthanc([]), PROBE: FakeOrthanc([])}

    reconcile(settings(), RULESET, **repairing(ledger, spool),
              client_factory=factory(orthancs))

    assert ledger.operators.waiting_count(PROBE) == 1
