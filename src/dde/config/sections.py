"""The sections of ``dde.yaml`` other than the endpoints."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from dde.config.base import StoreBackend, Strategy, _Strict


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


TRANSFER_SYNTAX_NAMES = {"explicit-le": "1.2.840.10008.1.2.1", "implicit-le": "1.2.840.10008.1.2",
                         "deflated": "1.2.840.10008.1.2.1.99", "big-endian": "1.2.840.10008.1.2.2"}
"""Names ``receiver.transfer_syntax_preference`` takes beside UIDs."""


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
    max_share_per_source: float = Field(default=1.0, gt=0, le=1)
    """The share of ``max_associations`` one source address may hold at once (at least one
    association): below 1, one busy or hostile host cannot take every slot."""
    processes: int = Field(default=1, ge=0, le=16)
    """Receiver processes beside the main one, sharing the port (``SO_REUSEPORT``); they
    stream datasets to the spool. 0: receive inside the main process (datasets are then
    held in memory while they arrive)."""
    max_pdu_size: int = Field(default=262144, ge=0)
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    refuse_undeliverable: bool = True
    """Answer a failure (SOP Class not supported, with the reason in Error Comment) for an
    instance a chosen destination is known to refuse and no transcoding can make acceptable,
    instead of a success the modality would take for "archived". Off: acknowledge it and
    let the delivery fail in the ledger."""
    transfer_syntax_preference: list[str] = Field(
        default_factory=lambda: ["explicit-le", "implicit-le", "sender"])
    """Of the transfer syntaxes a context proposes, the first listed here is accepted (names
    or UIDs); ``sender`` (last): else any other known one, in the sender's order. Without
    ``sender`` only the listed ones are accepted."""

    @field_validator("allowed_source_ips")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        return _networks(value)

    @field_validator("transfer_syntax_preference")
    @classmethod
    def _preference_parses(cls, value: list[str]) -> list[str]:
        uids = [TRANSFER_SYNTAX_NAMES.get(entry, entry) for entry in value if entry != "sender"]
        if not value or "sender" in value[:-1] or len(set(uids)) != len(uids):
            raise ValueError("transfer syntax names or UIDs, each once, 'sender' only last")
        for uid in uids:
            if len(uid) > 64 or not all(p.isdigit() and p.isascii() for p in uid.split(".")):
                raise ValueError(f"not a transfer syntax UID nor one of "
                                 f"{', '.join(TRANSFER_SYNTAX_NAMES)}, sender: {uid!r}")
        return value

    def transfer_syntax_order(self) -> tuple[list[str], bool]:
        """(the preferred transfer syntax UIDs, whether any other known one follows, in the
        sender's order)."""
        names = self.transfer_syntax_preference
        return [TRANSFER_SYNTAX_NAMES.get(n, n) for n in names if n != "sender"], "sender" in names


RECEIVER_NAME = r"^[A-Za-z0-9_.-]{1,32}$"
MAIN_RECEIVER = "main"
"""The name of the receiver ``receiver:`` describes (rules see it as ``Receiver: main``)."""


class ReceiverEntry(_Strict):
    """One more receiving AE title and port (``receivers:``), e.g. one per department or
    per source: its own address, allow-lists and TLS, and the rules for what arrives on it.
    The rest (processes, association limits, timeouts, PDU size, transfer syntax
    preference) is ``receiver:``'s, shared by every receiver."""

    name: str = Field(pattern=RECEIVER_NAME)
    ae_title: str = Field(min_length=1, max_length=16)
    host: str = "0.0.0.0"
    port: int = Field(ge=0, le=65535)
    allowed_calling_aets: list[str] = Field(default_factory=list)
    allowed_source_ips: list[str] = Field(default_factory=list)
    require_called_aet: bool = False
    tls: ReceiverTlsSettings = Field(default_factory=ReceiverTlsSettings)
    rules: str | None = Field(default=None, min_length=1)
    """The rules file for what this receiver takes (relative to the state folder, or
    absolute); absent: ``rules.yaml`` (or the default rule), as for the main receiver."""

    @field_validator("allowed_source_ips")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        return _networks(value)


def _networks(value: list[str]) -> list[str]:
    for entry in value:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or network: {entry!r}") from None
    return value


@dataclass(frozen=True)
class ReceivingAE:
    """One listener of the router as it runs: a name, the full receiver settings it
    listens with (``receiver:``'s shared knobs, the entry's address, allow-lists and TLS),
    and its own rules file if it has one."""

    name: str
    settings: ReceiverSettings
    rules: str | None = None

    @classmethod
    def of(cls, receiver: ReceiverSettings, entry: ReceiverEntry) -> ReceivingAE:
        own = entry.model_dump(exclude={"name", "rules"})
        own["tls"] = entry.tls
        return cls(entry.name, receiver.model_copy(update=own), entry.rules)


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
    associations: int = Field(default=2, ge=1, le=16)
    """Associations per destination (an endpoint's ``associations`` overrides it): one slow
    C-STORE never holds the rest of that destination's queue."""
    response_timeout_seconds: float = Field(default=20.0, gt=0)
    """A C-STORE with no response this long makes its delivery suspect: retried alone, on
    its own association and schedule, while the queue goes on over a fresh association."""
    stow_max_bytes: int = Field(default=64 << 20, ge=1)
    """A STOW-RS request (``dicomweb`` endpoints) carries instances of one study up to this
    many bytes of Part-10 files (an instance larger than this goes alone)."""
    stow_max_instances: int = Field(default=100, ge=1)
    """…and at most this many instances (also bounded by ``batch_size``)."""
    lease_seconds: float = Field(default=60.0, ge=2.0)
    """How long a claimed delivery is a worker's (renewed while it sends): when a node dies,
    another node sends its claimed deliveries once their lease has expired."""
    transcode_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """The largest decoded pixel data the router transcodes for a destination that does not
    accept an instance's transfer syntax (decoding happens in memory); a larger instance
    fails for that destination with the reason. 0: never transcode."""
    capability_max_age_seconds: float = Field(default=86400.0, gt=0)
    """How long what an association learned of a destination (which SOP class and transfer
    syntax it accepts) is trusted before the next association learns it again."""
    commitment_timeout_seconds: float = Field(default=600.0, gt=0)
    """A storage commitment with no report from the destination after this long fails, and
    its deliveries are sent again (endpoints with ``storage_commitment``)."""


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


class SecuritySettings(_Strict):
    allow_link_local_endpoints: bool = False  # endpoints at link-local, metadata addresses


class StoreSettings(_Strict):
    """The ledger's database: SQLite in the state folder (default) or PostgreSQL."""

    backend: StoreBackend = StoreBackend.SQLITE
    node: str = Field(default="", pattern=r"^[A-Za-z0-9_.]{0,32}$")
    """This router's name among the nodes sharing a PostgreSQL ledger (its delivery claims and
    its spool files carry it); empty: the host name. Each node needs its own."""
    url: str | None = None
    """``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`` (libpq's URL form) for the
    postgresql backend; ``DDE_STORE_URL`` overrides it (keeps a password out of dde.yaml)."""

    @model_validator(mode="after")
    def _url_for_postgresql(self) -> StoreSettings:
        if self.backend is StoreBackend.POSTGRESQL:
            if not self.url:
                raise ValueError("store.backend postgresql needs store.url "
                                 "(or DDE_STORE_URL): postgresql://USER@HOST:PORT/DATABASE")
            if urlsplit(self.url).scheme not in ("postgresql", "postgres"):
                raise ValueError("store.url must start with postgresql://")
        elif self.url:
            raise ValueError("store.url is only for store.backend: postgresql")
        return self


class SpoolSettings(_Strict):
    retention_seconds: float = Field(default=0.0, ge=0)
    """How long a spool file is kept once every delivery of it is delivered."""
    max_bytes: int = Field(default=0, ge=0)
    """Most bytes the spool may hold (0: no cap); beyond it C-STOREs get 0xA700."""
    folder: str = ""
    """The spool's folder; empty: ``spool`` in the state folder. Nodes sharing a PostgreSQL
    ledger share this folder (a shared volume), each instance's file readable by all."""
    min_free_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Free space that must remain on the spool's file system (0: no check); below it
    C-STOREs get 0xA700. Either limit lifts by itself as delivered files are removed."""


class RoutingSettings(_Strict):
    group: str = "storage"
    strategy: Strategy = Strategy.LEAST_LOADED
    mirror: list[str] = Field(default_factory=lambda: ["ORTHANC-PROBE"])
    load_refresh_seconds: float = Field(default=5.0, gt=0)


class StackOrthanc(_Strict):
    """One Orthanc of the reference deployment, started by ``dde stack up``.

    It is described once, as an endpoint: ``endpoint`` names the entry of ``endpoints``
    whose ``aet`` and ``port`` it listens with, and whose ``url`` gives its HTTP port
    (:mod:`dde.stack.layout` resolves it). The form written before (``name``, ``aet``,
    ``dicom_port``, ``http_port``) still loads: ``name`` is read as ``endpoint``, and the
    other three must agree with that endpoint (or stand alone when there is none).
    """

    endpoint: str = Field(min_length=1, max_length=64)
    config_file: str
    aet: str | None = None
    """Old form only (see the class)."""
    dicom_port: int | None = None
    """Old form only (see the class)."""
    http_port: int | None = None
    """Old form only (see the class)."""

    @model_validator(mode="before")
    @classmethod
    def _old_form_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" in data and "endpoint" not in data:
            data = {("endpoint" if key == "name" else key): value
                    for key, value in data.items()}
        return data

    @property
    def name(self) -> str:
        """The part's name (``dde stack status``, logs, PID file): the endpoint's name."""
        return self.endpoint


class StackSettings(_Strict):
    orthancs: list[StackOrthanc] = Field(
        default_factory=lambda: [
            StackOrthanc(endpoint="ORTHANC1", config_file="orthanc_storage_1.json"),
            StackOrthanc(endpoint="ORTHANC2", config_file="orthanc_storage_2.json"),
            StackOrthanc(endpoint="ORTHANC-PROBE", config_file="orthanc_probe.json"),
        ]
    )
    nodes: int = Field(default=1, ge=1, le=9)
    """How many router nodes ``dde stack up`` runs (``--nodes N`` sets it). From 2 on they
    share a PostgreSQL ledger and the spool folder, each on its own ports (``receiver.port``
    and ``web.port`` plus its number), with HAProxy on the public ports in front."""
