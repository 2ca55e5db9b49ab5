"""Typed, validated settings: the state folder, ``dde.yaml`` and ``DDE_*`` variables.

The state folder (``$DDE_HOME``, ``--home DIR`` or ``./var``) holds everything one router
owns: ``dde.yaml``, the spool, the SQLite ledger, logs, PID files and the reference stack's
Orthanc data. Two state folders never share a file.

``dde.yaml`` is written with the defaults on first use. Environment variables override the
receiver's listening address (``DDE_AE_TITLE``, ``DDE_DICOM_PORT``, ``DDE_DICOM_HOST``)
and the web part's (``DDE_WEB_HOST``, ``DDE_WEB_PORT``) so that a deployment can move the
router without editing the file.
"""

from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

CONFIG_FILE_NAME = "dde.yaml"
DEFAULT_HOME = "var"


class ConfigError(Exception):
    """The configuration cannot be read or is invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointKind(StrEnum):
    DICOM = "dicom"
    ORTHANC_REST = "orthanc-rest"


class Strategy(StrEnum):
    """How a group picks the endpoint for a new study (:mod:`dde.routing.strategies`)."""

    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"
    WEIGHTED = "weighted"


class EndpointState(StrEnum):
    ENABLED = "enabled"
    DRAINING = "draining"
    """Gets no new studies; finishes what is queued and what is pinned to it."""
    DISABLED = "disabled"
    """Gets nothing new and sends nothing; its queue waits (or is redirected on removal)."""


class TlsSettings(_Strict):
    """DICOM TLS (or HTTPS verification) towards one destination."""

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


class EndpointSettings(_Strict):
    """One destination PACS."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: EndpointKind = EndpointKind.DICOM
    aet: str = Field(min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=104, ge=1, le=65535)
    url: str | None = None
    """Orthanc's HTTP root: load statistics, and the target of ``orthanc-rest`` deliveries."""
    groups: list[str] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0)
    state: EndpointState = EndpointState.ENABLED
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @model_validator(mode="after")
    def _rest_needs_url(self) -> EndpointSettings:
        if self.kind is EndpointKind.ORTHANC_REST and not self.url:
            raise ValueError("an orthanc-rest endpoint needs a url (Orthanc's HTTP root)")
        return self

    @field_validator("url")
    @classmethod
    def _url_has_no_credentials(cls, value: str | None) -> str | None:
        # The url is shown (CLI, API, logs); credentials go in username and password.
        if value is not None and "@" in urlsplit(value).netloc:
            raise ValueError("put credentials in username and password, not in the url")
        return value

    @field_validator("aet")
    @classmethod
    def _aet_is_ascii(cls, value: str) -> str:
        if not value.isascii() or "\\" in value or value.strip() != value:
            raise ValueError("an AE title is at most 16 ASCII characters, no backslash")
        return value


class ReceiverTlsSettings(_Strict):
    """DICOM TLS on the receiving port (every association then needs TLS)."""

    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    """Certificate authorities trusted for client certificates."""
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _enabled_needs_certificate(self) -> ReceiverTlsSettings:
        if self.enabled and not self.cert_file:
            raise ValueError("TLS on the receiver needs cert_file (and key_file)")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("require_client_cert needs ca_file to verify clients with")
        return self


class ReceiverSettings(_Strict):
    ae_title: str = Field(default="DYNAMIC_DICOM_MW", min_length=1, max_length=16)
    allowed_calling_aets: list[str] = Field(default_factory=list)
    """Calling AE titles accepted (``*`` and ``?`` wildcards); empty: any."""
    allowed_source_ips: list[str] = Field(default_factory=list)
    """Source addresses accepted (IP addresses or CIDR networks); empty: any."""
    require_called_aet: bool = False
    """Refuse associations whose called AE title is not ``ae_title``."""
    tls: ReceiverTlsSettings = Field(default_factory=ReceiverTlsSettings)
    host: str = "0.0.0.0"
    port: int = Field(default=11113, ge=0, le=65535)
    max_associations: int = Field(default=32, ge=1)
    """Per receiver process."""
    processes: int = Field(default=1, ge=0, le=16)
    """Receiver processes beside the main one, sharing the port (``SO_REUSEPORT``); they
    stream datasets to the spool. 0: receive inside the main process (datasets are then
    held in memory while they arrive)."""
    max_pdu_size: int = Field(default=262144, ge=0)
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0

    @field_validator("allowed_source_ips")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {entry!r}") from None
        return value


class DeliverySettings(_Strict):
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_seconds: float = Field(default=1.0, gt=0)
    backoff_cap_seconds: float = Field(default=300.0, gt=0)
    connect_timeout: float = 10.0
    dimse_timeout: float = 60.0
    batch_size: int = Field(default=64, ge=1)
    idle_release_seconds: float = Field(default=2.0, ge=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    nice: int = Field(default=5, ge=0, le=19)
    """How many steps lower the delivery threads' CPU priority is than receiving (Linux
    nice): the sender's acknowledgements come first, deliveries catch up in the pauses."""


class HealthSettings(_Strict):
    interval_seconds: float = Field(default=5.0, gt=0)
    """How often each endpoint is probed (C-ECHO; Orthanc ``/statistics`` for the load)."""
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures that open the circuit breaker (the endpoint is then down)."""
    failover_after_seconds: float = Field(default=300.0, ge=0)
    """An endpoint down this long loses the undelivered rest of its pinned studies."""
    probe_timeout_seconds: float = Field(default=3.0, gt=0)


class ReconcileSettings(_Strict):
    interval_seconds: float = Field(default=0.0, ge=0)
    """Compare the storage PACS with the probe this often (0: only on `dde reconcile`)."""
    repair: bool = False
    """Queue the copies the probe misses when the periodic check finds some."""


class WebSettings(_Strict):
    """The HTTP side of the router: REST API, pages, ``/metrics`` and ``/healthz``."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    """0 picks a free port (tests); the bound one is then logged."""
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    """Largest upload (one request, or the files of a zip once extracted)."""


class SpoolSettings(_Strict):
    retention_seconds: float = Field(default=0.0, ge=0)
    """How long a spool file is kept once every delivery of it is delivered."""
    max_bytes: int = Field(default=0, ge=0)
    """Most bytes the spool may hold (0: no cap); beyond it C-STOREs get 0xA700."""
    min_free_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Free space that must remain on the spool's file system (0: no check); below it
    C-STOREs get 0xA700. Either limit lifts by itself as delivered files are removed."""


class RoutingSettings(_Strict):
    group: str = "storage"
    strategy: Strategy = Strategy.LEAST_LOADED
    mirror: list[str] = Field(default_factory=lambda: ["ORTHANC-PROBE"])
    load_refresh_seconds: float = Field(default=5.0, gt=0)


class StackOrthanc(_Strict):
    """One Orthanc of the reference deployment, started by ``dde stack up``."""

    name: str
    aet: str
    dicom_port: int
    http_port: int
    config_file: str


class StackSettings(_Strict):
    orthancs: list[StackOrthanc] = Field(
        default_factory=lambda: [
            StackOrthanc(name="ORTHANC1", aet="ORTHANC1", dicom_port=4242, http_port=8042,
                         config_file="orthanc_storage_1.json"),
            StackOrthanc(name="ORTHANC2", aet="ORTHANC2", dicom_port=4243, http_port=8043,
                         config_file="orthanc_storage_2.json"),
            StackOrthanc(name="ORTHANC-PROBE", aet="ORTHANC-PROBE", dicom_port=4244,
                         http_port=8044, config_file="orthanc_probe.json"),
        ]
    )


def _default_endpoints() -> list[EndpointSettings]:
    return [
        EndpointSettings(name="ORTHANC1", aet="ORTHANC1", port=4242,
                         url="http://127.0.0.1:8042", groups=["storage"]),
        EndpointSettings(name="ORTHANC2", aet="ORTHANC2", port=4243,
                         url="http://127.0.0.1:8043", groups=["storage"]),
        EndpointSettings(name="ORTHANC-PROBE", aet="ORTHANC-PROBE", port=4244,
                         url="http://127.0.0.1:8044", groups=["probe"]),
    ]


class Settings(_Strict):
    receiver: ReceiverSettings = Field(default_factory=ReceiverSettings)
    endpoints: list[EndpointSettings] = Field(default_factory=_default_endpoints)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    stack: StackSettings = Field(default_factory=StackSettings)

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, value: list[EndpointSettings]) -> list[EndpointSettings]:
        names = [e.name for e in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint names must be unique: {', '.join(duplicates)}")
        return value

    def endpoint(self, name: str) -> EndpointSettings | None:
        return next((e for e in self.endpoints if e.name == name), None)


class Home:
    """The state folder and the paths inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @classmethod
    def resolve(cls, option: str | None) -> Home:
        return cls(Path(option or os.environ.get("DDE_HOME") or DEFAULT_HOME))

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE_NAME

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    @property
    def database(self) -> Path:
        return self.root / "dde.sqlite3"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def rules_file(self) -> Path:
        return self.root / "rules.yaml"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def orthanc_dir(self) -> Path:
        return self.root / "orthanc"

    def ensure(self) -> None:
        for folder in (self.root, self.spool_dir, self.logs_dir, self.run_dir):
            folder.mkdir(parents=True, exist_ok=True)


_ENVIRONMENT: tuple[tuple[str, str, str, type], ...] = (
    ("DDE_AE_TITLE", "receiver", "ae_title", str),
    ("DDE_DICOM_HOST", "receiver", "host", str),
    ("DDE_DICOM_PORT", "receiver", "port", int),
    ("DDE_WEB_HOST", "web", "host", str),
    ("DDE_WEB_PORT", "web", "port", int),
)


def _apply_environment(raw: dict[str, Any]) -> dict[str, Any]:
    sections: dict[str, dict[str, Any]] = {}
    for variable, section, key, cast in _ENVIRONMENT:
        if variable in os.environ:
            values = sections.setdefault(section, dict(raw.get(section) or {}))
            try:
                values[key] = cast(os.environ[variable])
            except ValueError as exc:
                raise ConfigError(f"{variable}: {exc}") from exc
    return {**raw, **sections} if sections else raw


def parse_settings(raw: object, source: str = "configuration",
                   environment: bool = True) -> Settings:
    """Validate a configuration mapping; ``environment`` applies the ``DDE_*`` overrides."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return Settings.model_validate(_apply_environment(raw) if environment else raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            + (f" (not {err['input']!r})" if err["type"] == "enum" else "")
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def settings_to_yaml(settings: Settings) -> str:
    data = settings.model_dump(mode="json", exclude_none=True)
    for endpoint in data["endpoints"]:
        # SecretStr dumps as "**********"; never write a masked placeholder as a password.
        endpoint.pop("password", None)
    for endpoint, model in zip(data["endpoints"], settings.endpoints, strict=True):
        if model.password is not None:
            endpoint["password"] = model.password.get_secret_value()
    return yaml.safe_dump(data, sort_keys=False)


def load_settings(home: Home, config_file: Path | None = None,
                  environment: bool = True) -> Settings:
    """Read ``config_file`` (or ``dde.yaml`` in ``home``, written with defaults if absent).

    ``environment=False`` gives the file's own values (to rewrite it without baking the
    ``DDE_*`` overrides into it).
    """
    path = config_file or home.config_file
    if config_file is None and not path.exists():
        home.ensure()
        tmp = path.with_suffix(".yaml.part")
        tmp.write_text(
            "# Dynamic DICOM Endpoints configuration (written with the defaults on first use)\n"
            + settings_to_yaml(Settings())  # not parse_settings: no DDE_* in the file
        )
        os.replace(tmp, path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_settings(raw, str(path), environment)
