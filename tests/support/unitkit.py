"""Small builders and fakes for the unit tests (no network, no Orthanc)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid

from dde.config import EndpointSettings, Settings
from dde.endpoints.load import LoadBook
from dde.endpoints.sending import SendResult, Shipment
from dde.receiving.ingest import Incoming
from dde.routing.route import Route
from dde.store.intake import IngestView
from dde.store.ledger import Ledger
from dde.store.records import NewInstance
from tests.support.datagen import make_instance


def split_part10(raw: bytes) -> tuple[str, bytes]:
    """(transfer syntax UID, encoded dataset without file meta) of a Part-10 file."""
    stream = io.BytesIO(raw)
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    return str(meta.TransferSyntaxUID), stream.read()


def bundled_file(name: str) -> Path:
    """One of pydicom's bundled test files (never the network)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom does not bundle {name}"
    return Path(path)


def part10_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Generated:
    """A generated instance, encoded as the C-STORE dataset (no file meta)."""

    dataset: bytes
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str

    def incoming(self, calling_aet: str = "TEST_SCU", **changes: Any) -> Incoming:
        fields: dict[str, Any] = {
            "dataset": self.dataset, "transfer_syntax_uid": self.transfer_syntax_uid,
            "sop_class_uid": self.sop_class_uid, "sop_instance_uid": self.sop_instance_uid,
            "calling_aet": calling_aet, "called_aet": "DYNAMIC_DICOM_MW",
            "source_ip": "127.0.0.1",
        }
        fields.update(changes)
        return Incoming(**fields)


def generated(study_uid: str | None = None, number: int = 1, rows: int = 8,
              columns: int = 8) -> Generated:
    study_uid = study_uid or generate_uid()
    ds = make_instance(study_uid=study_uid, series_uid=generate_uid(), number=number,
                       rows=rows, columns=columns)
    syntax, dataset = split_part10(part10_bytes(ds))
    return Generated(dataset, syntax, str(ds.SOPClassUID), str(ds.SOPInstanceUID), study_uid)


def endpoint(name: str, groups: Iterable[str] = ("storage",), **extra: Any) -> EndpointSettings:
    return EndpointSettings(name=name, aet=name[:16], groups=list(groups), **extra)


def new_instance(spool_path: str = "ab/cd.dcm", *, sop_instance_uid: str | None = None,
                 study_instance_uid: str | None = "1.2.3.4", received_at: float | None = None,
                 size: int = 100, patient_id: str | None = "DDE-TEST-1",
                 accession_number: str | None = "ACC1",
                 transfer_syntax_uid: str = "1.2.840.10008.1.2.1") -> NewInstance:
    return NewInstance(
        sop_instance_uid=sop_instance_uid or generate_uid(),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid=transfer_syntax_uid,
        study_instance_uid=study_instance_uid,
        series_instance_uid="1.2.3.4.5",
        patient_id=patient_id,
        accession_number=accession_number,
        modality="CT",
        calling_aet="TEST_SCU",
        called_aet="DYNAMIC_DICOM_MW",
        source_ip="127.0.0.1",
        spool_path=spool_path,
        size=size,
        received_at=time.time() if received_at is None else received_at,
    )


def ingest_to(ledger: Ledger, destinations: Iterable[str], mirrors: Iterable[str] = (), *,
              pin: tuple[str, str, str] | None = None, **instance: Any) -> int:
    """Commit one instance routed to ``destinations`` (+ ``mirrors``); return its id."""
    route = Route("default", tuple(destinations), tuple(mirrors), pin)
    instance_id, _ = ledger.intake.ingest(new_instance(**instance), lambda view: route)
    return instance_id


def delivery_rows(ledger: Ledger, instance_id: int) -> dict[str, tuple[Any, ...]]:
    """{endpoint: (id, state, attempts, last_error, next_attempt_at)} of one instance."""
    return {d.endpoint: (d.id, d.state, d.attempts, d.last_error, d.next_attempt_at)
            for d in ledger.diagnostics.deliveries(instance_id=instance_id)}


@dataclass
class FakeView(IngestView):
    """An ``IngestView`` that the test feeds: study pins and pending counts per endpoint.

    ``pins`` maps (study, group) to the pinned endpoint. (The dataclass ``__init__``
    replaces IngestView's: no database connection.)"""

    pins: dict[tuple[str, str], str] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)

    def pin_for(self, study_instance_uid: str, group: str | None = None) -> str | None:
        for (study, pinned_group), name in sorted(self.pins.items()):
            if study == study_instance_uid and group in (None, pinned_group):
                return name
        return None

    def queued_counts(self) -> dict[str, int]:
        return dict(self.queued)

    def commit(self, route: Route) -> None:
        """What the ledger would write for ``route``: pending deliveries and the pins."""
        for name in route.destinations + route.mirrors:
            self.queued[name] = self.queued.get(name, 0) + 1
        for study, name, group in route.all_pins():
            self.pins[(study, group)] = name


def statistics_client_factory(counts: dict[str, int]) -> Callable[[EndpointSettings],
                                                                   httpx.Client]:
    """A LoadBook client factory answering ``GET /statistics`` from ``counts`` by name."""

    def factory(endpoint_settings: EndpointSettings) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            assert request.url.path == "/statistics"
            return httpx.Response(200, json={"CountInstances": counts[endpoint_settings.name]})

        return httpx.Client(transport=httpx.MockTransport(handler))

    return factory


def load_book(counts: dict[str, int] | None = None,
              endpoints: Iterable[EndpointSettings] = ()) -> LoadBook:
    """A LoadBook with no poller thread; polled once when ``counts`` are given."""
    book = LoadBook(60.0, client_factory=statistics_client_factory(counts or {}))
    book.set_endpoints(endpoints)
    if counts is not None:
        book.poll_once()
    return book


ResultScript = Callable[[Shipment], SendResult]


class FakeSender:
    """A ``Sender`` that records every call and answers with ``script(shipment)``."""

    def __init__(self, script: ResultScript | None = None) -> None:
        self.script = script or (lambda shipment: SendResult.delivered("ok"))
        self.sent: list[Shipment] = []
        self.sent_bytes: list[bytes] = []
        self.prepared: list[list[Shipment]] = []
        self.releases = 0
        self.lock = threading.Lock()

    def prepare(self, shipments: list[Shipment]) -> None:
        with self.lock:
            self.prepared.append(list(shipments))

    def send(self, shipment: Shipment) -> SendResult:
        with self.lock:
            self.sent.append(shipment)
            self.sent_bytes.append(shipment.path.read_bytes())
        return self.script(shipment)

    def release(self) -> None:
        with self.lock:
            self.releases += 1

    def sent_uids(self) -> list[str]:
        with self.lock:
            return [s.sop_instance_uid for s in self.sent]


ISSUE_EXAMPLE_RULES = """\
rules:
  - name: mr-to-orthanc2
    when: {Modality: MR}
    route: [ORTHANC2]
  - name: research-copy
    when: {CallingAET: "RESEARCH_*", StudyDescription: {regex: "(?i)brain"}}
    route: [ORTHANC1]
    continue: true
  - name: drop-tests
    when: {PatientID: {in: ["TEST", "PHANTOM"]}}
    action: discard
  - name: default
    route: {group: storage, strategy: least-loaded}
mirror: [ORTHANC-PROBE]
"""
"""The rules document of issue 3 (and the README)."""


@dataclass
class FakeLoads:
    """A LoadView: instances each PACS holds, by name."""

    counts: dict[str, int] = field(default_factory=dict)

    def stored(self, name: str) -> int:
        return self.counts.get(name, 0)


def run_coroutine(coroutine: Any) -> Any:
    """``asyncio.run(coroutine)`` in a thread of its own: the browser tests leave an event
    loop running in pytest's main thread, where ``asyncio.run`` refuses to start."""
    import asyncio

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(coroutine))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    assert outcome, "the coroutine did not finish within 120 s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


MR_RULES = """\
rules:
  - name: mr-to-orthanc2
    when: {Modality: MR}
    route: [ORTHANC2]
  - name: default
    route: {group: storage, strategy: round-robin}
mirror: [ORTHANC-PROBE]
"""
"""A rules document for the default endpoints: MR to ORTHANC2, the rest to the group."""

Change = Callable[[Settings], Settings]
"""A change of the settings, as :meth:`dde.config_store.ConfigStore.update` takes it."""


def add(name: str, groups: tuple[str, ...] = ("storage",)) -> Change:
    """The change that adds endpoint ``name`` (port 4300) to ``groups``."""
    def change(settings: Settings) -> Settings:
        endpoint = EndpointSettings(name=name, aet=name, port=4300, groups=list(groups))
        return settings.model_copy(update={"endpoints": [*settings.endpoints, endpoint]})
    return change


def without(name: str) -> Change:
    """The change that removes endpoint ``name``."""
    def change(settings: Settings) -> Settings:
        return settings.model_copy(
            update={"endpoints": [e for e in settings.endpoints if e.name != name]})
    return change


TAG_SITE_RULE = """\
  - name: tag-site
    when: {CallingAET: "CT_SCANNER_2"}
    set: {InstitutionName: "North Campus", "(0008,1010)": "CT2"}
    remove: [OtherPatientIDs]
    route: {group: storage, strategy: least-loaded}
"""
"""Issue 15's tag coercion example, as the README shows it (one rule of a rules list)."""
