"""Typed, validated settings: the state folder, ``dde.yaml`` and ``DDE_*`` variables.

The state folder (``$DDE_HOME``, ``--home DIR`` or ``./var``) holds everything one router
owns: ``dde.yaml``, the spool, the SQLite ledger, logs, PID files and the reference stack's
Orthanc data. Two state folders never share a file.

``dde.yaml`` is written with the defaults on first use. Environment variables override the
receiver's listening address (``DDE_AE_TITLE``, ``DDE_DICOM_PORT``, ``DDE_DICOM_HOST``)
and the web part's (``DDE_WEB_HOST``, ``DDE_WEB_PORT``) so that a deployment can move the
router without editing the file; ``DDE_STORE_URL`` gives the PostgreSQL ledger's URL (and
its password) without writing it into the file, and ``DDE_STORE_BACKEND``,
``DDE_STORE_NODE``, ``DDE_SPOOL_FOLDER`` make one configuration serve every node of a
cluster (containers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dde.config.base import CONFIG_FILE_NAME, DEFAULT_HOME, ConfigError, _Strict
from dde.config.endpoints import EndpointSettings, forbidden_host
from dde.config.sections import (
    MAIN_RECEIVER,
    DeliverySettings,
    HealthSettings,
    ReceiverEntry,
    ReceiverSettings,
    ReceivingAE,
    ReconcileSettings,
    RoutingSettings,
    SecuritySettings,
    SpoolSettings,
    StackSettings,
    StoreSettings,
    WebSettings,
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
    receivers: list[ReceiverEntry] = Field(default_factory=list)
    """More receiving AE titles and ports beside ``receiver:`` (the main one)."""
    endpoints: list[EndpointSettings] = Field(default_factory=_default_endpoints)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, value: list[EndpointSettings]) -> list[EndpointSettings]:
        names = [e.name for e in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint names must be unique: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _receivers_distinct(self) -> Settings:
        receivers = self.receiving_aes()
        problems = []
        columns: tuple[tuple[str, list[str | int]], ...] = (
            ("names", [r.name for r in receivers]),
            ("AE titles", [r.settings.ae_title.strip() for r in receivers]),
            ("ports", [r.settings.port for r in receivers]))
        for what, values in columns:  # port 0 (a free port each) may repeat
            twice = sorted({str(v) for v in values if values.count(v) > 1 and v != 0})
            if twice:
                problems.append(f"{what} used twice: {', '.join(twice)}")
        if problems:
            raise ValueError(f"each receiver (receiver: is {MAIN_RECEIVER!r}, then "
                             f"receivers:) needs its own name, AE title and port; "
                             + "; ".join(problems))
        return self

    def receiving_aes(self) -> list[ReceivingAE]:
        """Every receiver the router listens as: ``receiver:`` (named ``main``), then
        each entry of ``receivers:``."""
        return [ReceivingAE(MAIN_RECEIVER, self.receiver),
                *(ReceivingAE.of(self.receiver, entry) for entry in self.receivers)]

    def receiving_ae(self, name: str) -> ReceivingAE | None:
        return next((r for r in self.receiving_aes() if r.name == name), None)

    def named_receiving_ae(self, name: str) -> ReceivingAE:
        """The receiver ``name``; ConfigError naming the receivers there are."""
        found = self.receiving_ae(name)
        if found is None:
            names = ", ".join(r.name for r in self.receiving_aes())
            raise ConfigError(f"no receiver {name!r} (the receivers: {names})")
        return found

    @model_validator(mode="after")
    def _no_metadata_endpoints(self) -> Settings:
        bad = [f"endpoint {e.name}: {p}" for e in self.endpoints
               for h in (e.host, urlsplit(e.url or "").hostname)
               if h and (p := forbidden_host(h)) and not self.security.allow_link_local_endpoints]
        if bad:
            raise ValueError("; ".join(bad) + " (security.allow_link_local_endpoints allows it)")
        return self

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
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # private whatever the umask
        if self.root.stat().st_mode & 0o077:  # made by an older version (0755)
            self.root.chmod(0o700)


_ENVIRONMENT: tuple[tuple[str, str, str, type], ...] = (
    ("DDE_AE_TITLE", "receiver", "ae_title", str),
    ("DDE_DICOM_HOST", "receiver", "host", str),
    ("DDE_DICOM_PORT", "receiver", "port", int),
    ("DDE_WEB_HOST", "web", "host", str),
    ("DDE_WEB_PORT", "web", "port", int),
    ("DDE_STORE_URL", "store", "url", str),
    ("DDE_STORE_BACKEND", "store", "backend", str),
    ("DDE_STORE_NODE", "store", "node", str),
    ("DDE_SPOOL_FOLDER", "spool", "folder", str),
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


def settings_to_data(settings: Settings) -> dict[str, Any]:
    """The settings as plain data to write to ``dde.yaml`` (passwords and tokens in clear,
    never masked)."""
    data = settings.model_dump(mode="json", exclude_none=True)
    if not data["receivers"]:
        del data["receivers"]  # one receiver: dde.yaml reads as it always did
    for endpoint, model in zip(data["endpoints"], settings.endpoints, strict=True):
        # SecretStr dumps as "**********"; never write a masked placeholder as a secret.
        for key in ("password", "token"):
            endpoint.pop(key, None)
            secret = getattr(model, key)
            if secret is not None:
                endpoint[key] = secret.get_secret_value()
    return data


def settings_to_yaml(settings: Settings) -> str:
    return yaml.safe_dump(settings_to_data(settings), sort_keys=False)


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
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write("# Dynamic DICOM Endpoints configuration (written with the defaults on "
                      "first use)\n" + settings_to_yaml(Settings()))  # no DDE_* in the file
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
