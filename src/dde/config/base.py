"""The vocabulary of the settings: the error, the strict model base, the closed sets."""

from __future__ import annotations

from enum import StrEnum

from pydantic import (
    BaseModel,
    ConfigDict,
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
    DICOMWEB = "dicomweb"
    """STOW-RS to a DICOMweb service root (``url``), e.g. Orthanc's ``…/dicom-web``."""


HTTP_KINDS = frozenset({EndpointKind.ORTHANC_REST, EndpointKind.DICOMWEB})
"""Kinds delivered over HTTP to ``url`` (host, port and AE title are not used to send)."""


class StoreBackend(StrEnum):
    """Where the ledger lives (:mod:`dde.store`)."""

    SQLITE = "sqlite"
    """A file in the state folder (``dde.sqlite3``): one router node."""
    POSTGRESQL = "postgresql"
    """A PostgreSQL database (``store.url``), which several router nodes can share."""


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
