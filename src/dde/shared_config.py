"""The configuration the nodes of a cluster share: the endpoint list and the rules text, kept
in the PostgreSQL ledger they share (:class:`~dde.store.shared_documents.SharedDocuments`).

With ``store.backend: postgresql`` the database is the source of truth for the endpoints and
the rules (:class:`~dde.config_store.ConfigStore` uses this module then); everything else in
``dde.yaml`` (store, receiver, web, spool, …) stays each node's own. Two documents:

- ``endpoints``: the endpoint list as JSON, each endpoint as
  :func:`~dde.config.settings_to_data` writes it (passwords included, as in ``dde.yaml``);
- ``rules``: the text of ``rules.yaml``; empty when no rules document applies (the default
  rule, from each node's ``routing`` section).

The first node or command that finds no ``endpoints`` document seeds both from its own files
(a document another node wrote first is never replaced). A change is one read-and-write
transaction, so concurrent changes on two nodes both stay. A database error leaves as
:class:`SharedConfigUnavailable` (a :class:`~dde.config.ConfigError`).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dde.config import ConfigError, Settings, StoreSettings, parse_settings, settings_to_data
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.shared_documents import SharedDocuments

ENDPOINTS = "endpoints"
RULES = "rules"
NO_RULES = ""
"""The ``rules`` document's body when no rules document applies (the default rule)."""

Endpoints = list[dict[str, Any]]
Seed = Callable[[], tuple[Endpoints, str | None]]
"""This node's own endpoints and rules text (None: no rules.yaml), to seed a new cluster."""

T = TypeVar("T")


class SharedConfigUnavailable(ConfigError):
    """The shared configuration cannot be read or written now (the database is down or
    unreachable); the message says why. A running router keeps its configuration."""


@dataclass(frozen=True)
class SharedState:
    """The shared documents as read in one statement."""

    endpoints: Endpoints
    rules: str | None
    """None: no rules document, the default rule applies."""


def with_endpoints(settings: Settings, endpoints: Endpoints, source: str) -> Settings:
    """``settings`` (a node's own) with the shared endpoint list, validated."""
    data = settings_to_data(settings)
    data["endpoints"] = endpoints
    return parse_settings(data, f"{source} with the shared endpoints", environment=False)


def names_and_groups(endpoints: Endpoints) -> tuple[list[str], set[str]]:
    """What the rules are checked against: the endpoint names and the groups."""
    return ([str(e["name"]) for e in endpoints],
            {str(g) for e in endpoints for g in e.get("groups", [])})


class SharedConfig:
    """One node's handle on the shared documents: the ledger opened at the first use (one
    connection per thread that uses it), closed by :meth:`close`."""

    def __init__(self, store: StoreSettings) -> None:
        self.store = store
        self._node = store.node or socket.gethostname()[:32]
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()

    def _documents(self) -> SharedDocuments:
        with self._lock:
            if self._ledger is None:
                self._ledger = Ledger(url=self.store.url)
            return self._ledger.shared_documents

    def _call(self, what: Callable[[SharedDocuments], T]) -> T:
        try:
            return what(self._documents())
        except LedgerError as exc:
            raise SharedConfigUnavailable(f"the shared configuration: {exc}") from exc

    def versions(self) -> tuple[tuple[str, int], ...]:
        """Every document's version (one small query): what the watch polls."""
        return tuple(sorted(self._call(lambda d: d.versions()).items()))

    def read(self, seed: Seed) -> SharedState:
        """The endpoints and rules; seeded from ``seed()`` first if there are none yet."""
        def read_or_seed(documents: SharedDocuments) -> SharedState:
            found = documents.read_many((ENDPOINTS, RULES))
            if ENDPOINTS not in found:
                endpoints, rules = seed()
                documents.seed({ENDPOINTS: json.dumps(endpoints), RULES: rules or NO_RULES},
                               self._node)
                found = documents.read_many((ENDPOINTS, RULES))
            return SharedState(_endpoints(found[ENDPOINTS][0]), _rules(found.get(RULES)))

        return self._call(read_or_seed)

    def change_endpoints(self, edit: Callable[[Endpoints, str | None], Endpoints],
                         seed: Seed) -> int:
        """Replace the endpoint list by ``edit(endpoints, rules)`` in one transaction (an
        exception from ``edit`` refuses the change: nothing is written); the new version."""
        self.read(seed)

        def change(documents: SharedDocuments) -> int:
            def body(current: str | None) -> str:
                rules = _rules(documents.read(RULES))
                return json.dumps(edit(_endpoints(current or "[]"), rules))

            return documents.update(ENDPOINTS, body, self._node)

        return self._call(change)

    def change_rules(self, edit: Callable[[Endpoints], str | None], seed: Seed) -> int:
        """Replace the rules by ``edit(endpoints)`` (None: the default rule) in one
        transaction (an exception from ``edit`` refuses the change); the new version."""
        self.read(seed)

        def change(documents: SharedDocuments) -> int:
            def body(current: str | None) -> str:
                endpoints = documents.read(ENDPOINTS)
                return edit(_endpoints(endpoints[0] if endpoints else "[]")) or NO_RULES

            return documents.update(RULES, body, self._node)

        return self._call(change)

    def close(self) -> None:
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None


def _endpoints(body: str) -> Endpoints:
    try:
        loaded = json.loads(body)
    except ValueError as exc:
        raise ConfigError(f"the shared endpoints are not JSON: {exc}") from None
    if not isinstance(loaded, list) or not all(isinstance(e, dict) for e in loaded):
        raise ConfigError("the shared endpoints are not a list of endpoints")
    return loaded


def _rules(document: tuple[str, int] | None) -> str | None:
    return None if document is None or document[0] == NO_RULES else document[0]
