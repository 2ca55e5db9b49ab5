"""What the web part needs from the running router (:class:`dde.runtime.main.RouterApp` provides
it; tests pass fakes). Read-only properties so that any object with these attributes fits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from dde.config import Home, Settings
from dde.config_store import ConfigStore
from dde.receiving.ingest import IngestPipeline
from dde.store.ledger import Ledger
from dde.store.spool import Spool


class ReceiverView(Protocol):
    @property
    def running(self) -> bool: ...

    @property
    def port(self) -> int: ...

    @property
    def ports(self) -> dict[str, int]:
        """Each receiver's port by receiver name (``main`` first)."""
        ...


class HealthView(Protocol):
    def snapshot(self) -> dict[str, dict[str, Any]]: ...


class Waker(Protocol):
    def wake(self, names: Iterable[str]) -> None: ...


class WebServices(Protocol):
    @property
    def home(self) -> Home: ...

    @property
    def settings(self) -> Settings:
        """The settings the router runs with now (changes are applied within a second)."""
        ...

    @property
    def store(self) -> ConfigStore: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def spool(self) -> Spool: ...

    @property
    def pipeline(self) -> IngestPipeline: ...

    @property
    def receiver(self) -> ReceiverView: ...

    @property
    def health(self) -> HealthView: ...

    @property
    def dispatcher(self) -> Waker: ...
