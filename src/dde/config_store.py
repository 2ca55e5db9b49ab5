"""The configuration as files, changed atomically and watched by the running router.

``dde.yaml`` (endpoints, settings) and ``rules.yaml`` (routing rules) in the state folder are
the single source of truth. The CLI (and later the web API) change them under an exclusive
lock, validated first and written with tmp + fsync + rename; a running router notices the
change within a second and applies it without a restart. An edit by hand is applied the
same way, and an invalid one is refused (logged) while the old configuration stays.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dde.config import (
    ConfigError,
    Home,
    Settings,
    load_settings,
    parse_settings,
    settings_to_yaml,
)
from dde.routing.rules import RulesError, RuleSet, default_ruleset, parse_rules

log = logging.getLogger(__name__)

HEADER = "# Dynamic DICOM Endpoints configuration; `dde endpoints …` rewrites this file.\n"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def default_rules_text(settings: Settings) -> str:
    """The rules document equivalent to the default rule (shown when no rules.yaml exists)."""
    routing = settings.routing
    mirror = json.dumps(list(routing.mirror))
    return (
        "# no rules.yaml: the default rule applies\n"
        "rules:\n  - name: default\n"
        f"    route: {{group: {routing.group}, strategy: {routing.strategy}}}\n"
        f"mirror: {mirror}\n"
    )


class ConfigStore:
    def __init__(self, home: Home, config_file: Path | None = None) -> None:
        self.home = home
        self.path = config_file or home.config_file
        self._explicit = config_file is not None
        self.rules_path = home.rules_file

    # -- reading -------------------------------------------------------------------------
    def settings(self) -> Settings:
        return load_settings(self.home, self.path if self._explicit else None)

    def fingerprint(self) -> tuple[object, ...]:
        return (_stat(self.path), _stat(self.rules_path))

    def rules_text(self, settings: Settings) -> str | None:
        """The active rules document, or None when the default rule applies."""
        try:
            return self.rules_path.read_text()
        except FileNotFoundError:
            return None

    def ruleset(self, settings: Settings) -> RuleSet:
        text = self.rules_text(settings)
        if text is None:
            routing = settings.routing
            return default_ruleset(routing.group, routing.strategy, routing.mirror)
        try:
            return parse_rules(text, [e.name for e in settings.endpoints],
                               {g for e in settings.endpoints for g in e.groups})
        except RulesError as exc:
            raise ConfigError(f"{self.rules_path}: {exc}") from None

    # -- changing ------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def update(self, change: Callable[[Settings], Settings]) -> Settings:
        """Apply ``change`` to the current settings, validate, and write them atomically.

        ``change`` may raise ConfigError to refuse; nothing is written then. The rules must
        stay valid against the changed endpoints.
        """
        with self.locked():
            current = load_settings(self.home, self.path if self._explicit else None,
                                    environment=False)
            changed = change(current)
            validated = parse_settings(changed.model_dump(mode="python"), str(self.path),
                                       environment=False)
            text = self.rules_text(validated)
            if text is not None:
                try:
                    parse_rules(text, [e.name for e in validated.endpoints],
                                {g for e in validated.endpoints for g in e.groups})
                except RulesError as exc:
                    raise ConfigError(f"the change would break the rules in "
                                      f"{self.rules_path}: {exc}") from None
            _write_atomically(self.path, HEADER + settings_to_yaml(validated))
            return validated

    def apply_rules(self, text: str) -> RuleSet:
        """Validate ``text`` against the configured endpoints and make it the active rules.

        Raises :class:`RulesError` (with the line) and leaves the old rules in place.
        """
        with self.locked():
            settings = self.settings()
            ruleset = parse_rules(text, [e.name for e in settings.endpoints],
                                  {g for e in settings.endpoints for g in e.groups})
            _write_atomically(self.rules_path, text if text.endswith("\n") else text + "\n")
            return ruleset


class ConfigWatch:
    """Notices changes of the configuration files (by their fingerprint) for a running
    process; an invalid change is logged and skipped, the previous configuration stays."""

    def __init__(self, store: ConfigStore) -> None:
        self._store = store
        self._fingerprint = store.fingerprint()

    def changed(self) -> tuple[Settings, RuleSet] | None:
        """The new settings and rules if the files changed and are valid, else None."""
        fingerprint = self._store.fingerprint()
        if fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint
        try:
            settings = self._store.settings()
            return settings, self._store.ruleset(settings)
        except ConfigError as exc:
            log.error("configuration change refused, the previous one stays: %s", exc)
            return None
