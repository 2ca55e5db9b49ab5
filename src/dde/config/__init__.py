"""Typed, validated settings: the state folder, ``dde.yaml`` and ``DDE_*`` variables.

- :mod:`dde.config.base` — the error, the strict model base, closed sets as enums;
- :mod:`dde.config.endpoints` — an endpoint and the checks on its address;
- :mod:`dde.config.sections` — the other sections of ``dde.yaml``;
- :mod:`dde.config.settings` — the whole document, the state folder, reading and writing.

Everything a caller needs is importable from ``dde.config``.
"""

from dde.config.base import (
    CONFIG_FILE_NAME,
    DEFAULT_HOME,
    HTTP_KINDS,
    ConfigError,
    EndpointKind,
    EndpointState,
    StoreBackend,
    Strategy,
)
from dde.config.endpoints import EndpointSettings, TlsSettings, forbidden_host
from dde.config.sections import (
    MAIN_RECEIVER,
    TRANSFER_SYNTAX_NAMES,
    DeliverySettings,
    HealthSettings,
    ReceiverEntry,
    ReceiverSettings,
    ReceiverTlsSettings,
    ReceivingAE,
    ReconcileSettings,
    RoutingSettings,
    SecuritySettings,
    SpoolSettings,
    StackOrthanc,
    StackSettings,
    StoreSettings,
    WebSettings,
)
from dde.config.settings import (
    Home,
    Settings,
    load_settings,
    parse_settings,
    settings_to_data,
    settings_to_yaml,
)

__all__ = [
    "CONFIG_FILE_NAME", "DEFAULT_HOME", "HTTP_KINDS", "MAIN_RECEIVER", "TRANSFER_SYNTAX_NAMES",
    "ConfigError", "ReceiverEntry", "ReceivingAE",
    "DeliverySettings", "EndpointKind", "EndpointSettings", "EndpointState", "HealthSettings",
    "Home", "ReceiverSettings", "ReceiverTlsSettings", "ReconcileSettings", "RoutingSettings",
    "SecuritySettings", "Settings", "SpoolSettings", "StackOrthanc", "StackSettings",
    "StoreBackend", "StoreSettings", "Strategy", "TlsSettings", "WebSettings",
    "forbidden_host", "load_settings", "parse_settings", "settings_to_data", "settings_to_yaml",
]
