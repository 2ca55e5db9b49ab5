"""The web application over real parts in a temporary folder (ledger, spool, configuration
files, ingest pipeline) and fakes for the live ones (receiver, health, dispatcher)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from dde.config import Home, Settings, WebSettings, parse_settings, settings_to_yaml
from dde.config_store import ConfigStore
from dde.receiving.ingest import IngestPipeline
from dde.routing.router import Router
from dde.store.ledger import Ledger
from dde.store.spool import Spool
from dde.web.auth import Authenticator
from dde.web.metrics import WebMetrics
from dde.web.server import build_app
from tests.support.datagen import make_instance
from tests.support.unitkit import load_book, part10_bytes

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTER_AET = "DYNAMIC_DICOM_MW"


@dataclass
class FakeReceiver:
    running: bool = True
    port: int = 11113

    @property
    def ports(self) -> dict[str, int]:
        return {"main": self.port}


@dataclass
class FakeHealth:
    states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: dict(state) for name, state in self.states.items()}


@dataclass
class RecordingDispatcher:
    woken: list[list[str]] = field(default_factory=list)

    def wake(self, names: Iterable[str]) -> None:
        self.woken.append(list(names))


def default_settings(**overrides: Any) -> Settings:
    raw: dict[str, Any] = {
        "receiver": {"ae_title": ROUTER_AET},
        "endpoints": [
            {"name": "ORTHANC1", "aet": "ORTHANC1", "port": 4242, "groups": ["storage"]},
            {"name": "ORTHANC2", "aet": "ORTHANC2", "port": 4243, "groups": ["storage"]},
            {"name": "ORTHANC-PROBE", "aet": "ORTHANC-PROBE", "port": 4244,
             "groups": ["probe"]},
        ],
        **overrides,
    }
    return parse_settings(raw, environment=False)


@dataclass
class Services:
    """What :func:`dde.web.server.build_app` needs, over real files in ``home``."""

    home: Home
    store: ConfigStore
    ledger: Ledger
    spool: Spool
    pipeline: IngestPipeline
    receiver: FakeReceiver
    health: FakeHealth
    dispatcher: RecordingDispatcher
    router: Router

    @property
    def settings(self) -> Settings:
        return self.store.settings()


@dataclass
class WebKit:
    services: Services
    metrics: WebMetrics
    app: FastAPI
    client: TestClient

    @property
    def ledger(self) -> Ledger:
        return self.services.ledger

    def spool_files(self) -> list[Path]:
        return sorted(p for p in self.services.spool.root.rglob("*") if p.is_file())

    def instance_count(self) -> int:
        return self.ledger.diagnostics.count("instances")


def make_webkit(tmp_path: Path, settings: Settings | None = None,
                web: WebSettings | None = None) -> WebKit:
    home = Home(tmp_path / "home")
    home.ensure()
    settings = settings or default_settings()
    home.config_file.write_text(settings_to_yaml(settings))
    store = ConfigStore(home)
    ledger = Ledger(home.database)
    spool = Spool(home.spool_dir)
    router = Router(settings.routing, settings.endpoints, load_book())
    dispatcher = RecordingDispatcher()
    metrics = WebMetrics()
    pipeline = IngestPipeline(ledger, spool, router, dispatcher.wake, metrics)
    services = Services(home, store, ledger, spool, pipeline, FakeReceiver(), FakeHealth(),
                        dispatcher, router)
    app = build_app(services, metrics, Authenticator(TOKEN), web or settings.web)
    return WebKit(services, metrics, app, TestClient(app, raise_server_exceptions=False))


def dicom_bytes(patient_id: str = "DDE-TEST-1", study_uid: str | None = None,
                accession: str = "ACC1", rows: int = 8) -> tuple[bytes, str]:
    """A Part-10 file and its SOP Instance UID."""
    study_uid = study_uid or generate_uid()
    ds = make_instance(study_uid=study_uid, series_uid=generate_uid(), number=1,
                       rows=rows, columns=rows, patient_id=patient_id, accession=accession)
    return part10_bytes(ds), str(ds.SOPInstanceUID)


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus exposition (``labels`` as printed)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    raise KeyError(wanted)
