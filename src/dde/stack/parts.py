"""The parts of the stack: what each is, which ports it holds, where its files are.

One router (``--nodes 1``, the default): the Orthancs and ``router``. Several nodes
(``stack.nodes`` ≥ 2, :mod:`dde.stack.cluster`): the Orthancs, ``postgresql`` (the shared
ledger), ``router-1`` … ``router-N`` (each with its own state folder and ports) and
``haproxy`` on the public DICOM and web ports. A router on a PostgreSQL server the stack
runs itself (``store.url`` naming the stack's socket) also gets the ``postgresql`` part.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dde.config import Settings
from dde.stack.layout import OrthancSpec

ROUTER = "router"
POSTGRESQL = "postgresql"
HAPROXY = "haproxy"


class PartKind(Enum):
    ORTHANC = "orthanc"
    POSTGRESQL = "postgresql"
    ROUTER = "router"
    HAPROXY = "haproxy"


START_ORDER = (PartKind.POSTGRESQL, PartKind.ORTHANC, PartKind.ROUTER, PartKind.HAPROXY)
"""Each kind starts once the kinds before it answer."""
STOP_ORDER = (PartKind.HAPROXY, PartKind.ROUTER, PartKind.ORTHANC, PartKind.POSTGRESQL)
"""The entry first (no new associations), the ledger last (routers finish writing)."""


@dataclass(frozen=True)
class Part:
    """One process of the stack and where its files are."""

    name: str
    ports: tuple[int, ...]
    log: Path
    pid_file: Path
    config: Path | None
    orthanc: OrthancSpec | None = None
    storage_dir: Path | None = None
    kind: PartKind = PartKind.ROUTER
    home: Path | None = None
    """A router's state folder."""
    ae_title: str = ""
    """A router's (or HAProxy's, in front of the routers) called AE title."""
    more_receivers: tuple[tuple[str, int], ...] = ()
    """A router's (or HAProxy's) ``receivers:`` (name, port): the last of its ports."""

    @property
    def is_router(self) -> bool:
        return self.kind is PartKind.ROUTER

    def port_setting(self, port: int) -> str:
        """Where in dde.yaml ``port`` is configured, for error messages."""
        if self.orthanc is not None:
            return self.orthanc.port_setting(port)
        more = {p: n for n, p in self.more_receivers}
        if port in more and port != self.ports[0]:
            where = f"the port of receivers entry {more[port]}"
        else:
            where = "receiver.port" if port == self.ports[0] else "web.port"
        if self.kind is PartKind.ROUTER and self.name != ROUTER:
            return f"{where} (+ the node's number)"
        return where

    @property
    def dicom_port(self) -> int:
        return self.ports[0]

    @property
    def web_port(self) -> int | None:
        return self.ports[1] if len(self.ports) - len(self.more_receivers) > 1 else None


def router_ports(settings: Settings) -> tuple[int, ...]:
    """The router's DICOM port, then its HTTP port (UI, API, /healthz) when enabled, then
    the port of each ``receivers:`` entry."""
    more = tuple(port for _, port in more_receivers(settings))
    if settings.web.enabled:
        return (settings.receiver.port, settings.web.port, *more)
    return (settings.receiver.port, *more)


def more_receivers(settings: Settings) -> tuple[tuple[str, int], ...]:
    """The router's receivers beside ``receiver:``: (name, port) each."""
    return tuple((entry.name, entry.port) for entry in settings.receivers)
