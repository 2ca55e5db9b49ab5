"""The parts every process of one router shares, wired once, and changed live in one place.

A :class:`RouterCore` holds the configuration files and their watch, the ledger, the spool
(with its limits), the router and the ingest pipeline. The main process, each receiver
process and the CLI build one; they differ only in where the router's picture of endpoint
health and load comes from (the main process probes; the others read what it publishes)
and in what hears of a commit.

:meth:`RouterCore.apply` takes a whole new :class:`~dde.config.Settings` and rules: it
applies every setting that can change while running, hands the change to the listeners
(the main process's dispatcher, probes and loads), and logs each setting that only takes
effect at the next start.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from dde.config import Settings, StoreBackend
from dde.config_store import ConfigStore
from dde.config_watch import ConfigWatch
from dde.receiving.deliverability import Deliverability
from dde.receiving.ingest import IngestPipeline
from dde.routing.deidentify_action import Profiles
from dde.routing.published import PublishedEndpoints
from dde.routing.router import HealthView, LoadView, Router
from dde.routing.rules import RuleSet
from dde.store.ledger import open_ledger
from dde.store.spool import Spool
from dde.telemetry import NULL_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

RESTART_SECTIONS = ("receiver", "receivers", "web", "store", "stack")
"""Sections read once at start: a change is logged and waits for the next start (the
rules files a ``receivers:`` entry names are read live all the same)."""
RESTART_FIELDS = {"reconcile": ("interval_seconds",), "routing": ("load_refresh_seconds",)}
"""Single fields read once at start."""

Listener = Callable[[Settings, Settings, RuleSet], None]
"""Called with (previous settings, new settings, new rules) once the core applied them."""


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """The settings (``section`` or ``section.field``) that changed from ``old`` to ``new``
    and take effect only at the next start."""
    changed = [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]
    for section, fields in RESTART_FIELDS.items():
        changed += [f"{section}.{f}" for f in fields
                    if getattr(getattr(old, section), f) != getattr(getattr(new, section), f)]
    return changed


def _ignore_commit(destinations: Iterable[str]) -> None:
    """A tool's commits need no wake-up: the running router polls its queues."""


def node_name(settings: Settings) -> str:
    """This router's name among nodes sharing a PostgreSQL ledger (``store.node``, else the
    host name made safe); empty for SQLite (one node by construction)."""
    if settings.store.backend is not StoreBackend.POSTGRESQL:
        return ""
    name = settings.store.node or re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
    return name[:32] or "node"


class RouterCore:
    def __init__(self, home_config: ConfigStore, settings: Settings, ruleset: RuleSet, *,
                 health: HealthView | None = None, loads: LoadView | None = None,
                 on_committed: Callable[[Iterable[str]], None] = _ignore_commit,
                 telemetry: Telemetry = NULL_TELEMETRY, shared_spool: bool = True,
                 published_max_age: float = 0.5) -> None:
        """``health`` and ``loads`` are the router's live picture; without them it routes
        with what the main process publishes (:class:`PublishedEndpoints`)."""
        self.config = home_config
        self.home = home_config.home
        self.settings = settings
        self.ruleset = ruleset
        self._watch = ConfigWatch(home_config, (settings, ruleset))
        self.ledger = open_ledger(settings.store, self.home.database)
        self.node = node_name(settings)
        folder = Path(settings.spool.folder) if settings.spool.folder else self.home.spool_dir
        self.spool = Spool(folder, settings.spool.max_bytes, settings.spool.min_free_bytes,
                           shared=shared_spool or bool(self.node), node=self.node)
        self.published: PublishedEndpoints | None = None
        if health is None or loads is None:
            published = PublishedEndpoints(self.ledger.status_board,
                                           settings.health.failover_after_seconds,
                                           max_age=published_max_age)
            self.published = published
            health, loads = health or published, loads or published
        self.router = Router(settings.routing, settings.endpoints, loads, health, ruleset)
        deliverability = None
        if settings.receiver.refuse_undeliverable:
            deliverability = Deliverability(self.ledger.capabilities,
                                            settings.delivery.capability_max_age_seconds,
                                            transcoding=settings.delivery.transcode_max_bytes > 0)
        # The salts of de-identifying rules: read from the state folder's secrets (or the
        # environment) when a rule first needs one, again after the rules change.
        self.profiles = Profiles(self.home.root, os.environ)
        self.pipeline = IngestPipeline(self.ledger, self.spool, self.router, on_committed,
                                       telemetry, deliverability, self.profiles)
        self.listeners: list[Listener] = []

    @classmethod
    def for_tool(cls, config: ConfigStore) -> RouterCore:
        """A core for a CLI command: the current files, the published endpoint picture."""
        settings = config.settings()
        return cls(config, settings, config.ruleset(settings), published_max_age=0)

    # -- live configuration ------------------------------------------------------------
    def reload(self) -> bool:
        """Apply the configuration files if they changed; an invalid change is refused
        (logged) and the current configuration stays."""
        change = self._watch.changed()
        if change is None:
            return False
        self.apply(*change)
        return True

    def apply(self, settings: Settings, ruleset: RuleSet) -> None:
        """Apply every live-changeable setting; log the ones that wait for a restart."""
        previous = self.settings
        self.router.configure(ruleset, settings.endpoints)
        self.profiles.clear()
        self.spool.max_bytes = settings.spool.max_bytes
        self.spool.min_free_bytes = settings.spool.min_free_bytes
        if self.published is not None:
            self.published.failover_after = settings.health.failover_after_seconds
        self.settings = settings
        self.ruleset = ruleset
        for listener in self.listeners:
            listener(previous, settings, ruleset)
        for name in restart_needed(previous, settings):
            log.warning("%s changed; it takes effect at the next restart", name)

    def close(self) -> None:
        self.ledger.close()
        self.config.close()

