"""The running router's watch on its configuration: about once a second each process asks
:meth:`ConfigWatch.changed` whether the configuration changed, and applies what it returns.

The fingerprint is the files' stat (two calls when nothing changed) and, in shared mode
(``store.backend: postgresql``), the versions of the shared documents (one small query):
another node's change is noticed at the next poll. An invalid change is logged and skipped;
a database error is logged once while it lasts, and the configuration in force stays.
"""

from __future__ import annotations

import logging

from dde.config import ConfigError, Settings
from dde.config_store import ConfigStore
from dde.routing.rules import RuleSet
from dde.shared_config import SharedConfigUnavailable

log = logging.getLogger(__name__)


class ConfigWatch:
    """Notices changes of the configuration files (by their fingerprint) for a running
    process; an invalid change is logged and skipped, the previous configuration stays.

    Shared mode: the fingerprint holds the shared documents' versions too; a change brings
    this node's copies up to date first, a configuration equal to the one in force is not
    applied again, and a database error is logged once (the configuration stays)."""

    def __init__(self, store: ConfigStore,
                 current: tuple[Settings, RuleSet] | None = None) -> None:
        self._store = store
        self._current = current
        self._unavailable: str | None = None
        self._fingerprint: tuple[object, ...] | None
        if store.shared:
            store.refresh_own_copy()  # first: it may seed the cluster, or write the copies
        try:
            self._fingerprint = store.fingerprint()
        except SharedConfigUnavailable as exc:
            self._fingerprint = None  # the first poll that can read it applies it
            self._down(exc)

    def changed(self) -> tuple[Settings, RuleSet] | None:
        """The new settings and rules if the files changed and are valid, else None."""
        try:
            fingerprint = self._store.fingerprint()
            if fingerprint != self._fingerprint and self._store.shared:
                self._store.refresh_own_copy()
                fingerprint = self._store.fingerprint()
        except SharedConfigUnavailable as exc:
            self._down(exc)
            return None
        if fingerprint == self._fingerprint:
            self._up()
            return None
        previous, self._fingerprint = self._fingerprint, fingerprint
        try:
            settings = self._store.settings()
            change = settings, self._store.ruleset(settings)
        except SharedConfigUnavailable as exc:
            self._fingerprint = previous  # read again at the next poll
            self._down(exc)
            return None
        except ConfigError as exc:
            log.error("configuration change refused, the previous one stays: %s", exc)
            return None
        self._up()
        if self._store.shared:
            if change == self._current:
                return None
            self._current = change
        return change

    def _down(self, exc: Exception) -> None:
        if self._unavailable is None:
            log.warning("the shared configuration cannot be read, the current one stays: %s",
                        exc)
        self._unavailable = str(exc)

    def _up(self) -> None:
        if self._unavailable is not None:
            log.info("the shared configuration can be read again")
            self._unavailable = None
