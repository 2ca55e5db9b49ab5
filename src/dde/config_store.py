"""The configuration as files, changed atomically and watched by the running router.

``dde.yaml`` (endpoints, settings) and ``rules.yaml`` (routing rules) in the state folder are
the single source of truth. The CLI (and later the web API) change them under an exclusive
lock, validated first and written with tmp + fsync + rename; a running router notices the
change within a second and applies it without a restart. An edit by hand is applied the
same way, and an invalid one is refused (logged) while the old configuration stays.

A change rewrites only what changed in ``dde.yaml`` (:func:`rewrite_yaml`, round-trip
YAML): the user's comments, the order of keys and endpoints, and the values left to their
defaults stay as they were.

Shared mode (``store.backend: postgresql``, several nodes on one ledger): the database is the
source of truth for the endpoint list and the rules (:mod:`dde.shared_config`); the rest of
``dde.yaml`` stays the node's own. The node's ``endpoints:`` and ``rules.yaml`` are its
copies: they seed a cluster that has none yet; a change made on this node writes the
database, then them; and a running router (:class:`~dde.config_watch.ConfigWatch`) brings
them up to date when another node changed the database. So a hand edit of a node's endpoints
or rules is replaced by the shared ones: change them with ``dde endpoints …``, ``dde rules
apply``, the API or the pages. The watch polls the documents' versions beside the files'
stat, so a change on one node is applied on every node within about a second.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import yaml
from ruamel.yaml.error import YAMLError as RoundTripYAMLError

from dde.config import (
    ConfigError,
    Home,
    ReceivingAE,
    Settings,
    StoreBackend,
    load_settings,
    parse_settings,
    settings_to_data,
    settings_to_yaml,
)
from dde.config.yaml_rewrite import rewrite_yaml
from dde.routing.rules import (
    RulesError,
    RuleSet,
    check_secrets,
    default_ruleset,
    parse_rules,
)
from dde.shared_config import (
    Endpoints,
    SharedConfig,
    names_and_groups,
    with_endpoints,
)

log = logging.getLogger(__name__)

HEADER = "# Dynamic DICOM Endpoints configuration; `dde endpoints …` rewrites this file.\n"


PRIVATE_MODE = 0o600
"""A new configuration file's mode (``dde.yaml`` holds PACS passwords)."""


def write_atomically(path: Path, text: str) -> None:
    """tmp + fsync + rename + fsync of the folder; the file keeps its mode (0600 if new)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = PRIVATE_MODE
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w") as out:
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


def _read_rules(path: Path, receiver: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path} (rules of receiver {receiver}): "
                          f"{exc.strerror or exc}") from None


class ConfigStore:
    def __init__(self, home: Home, config_file: Path | None = None) -> None:
        self.home = home
        self.path = config_file or home.config_file
        self._explicit = config_file is not None
        self.rules_path = home.rules_file
        self._shared: SharedConfig | None = None
        self._resolved = False
        self._shared_lock = threading.Lock()
        self._receiver_rules: tuple[Path, ...] | None = None
        """The receivers' own rules files as last read (watched beside the two files);
        None: not known yet."""

    # -- reading -------------------------------------------------------------------------
    def settings(self) -> Settings:
        local = load_settings(self.home, self.path if self._explicit else None)
        shared = self._shared_config(local)
        if shared is None:
            return local
        return with_endpoints(local, shared.read(self._own_copy).endpoints, str(self.path))

    def fingerprint(self) -> tuple[object, ...]:
        files = (_stat(self.path), _stat(self.rules_path),
                 *(_stat(path) for path in self._receivers_rules_files()))
        shared = self._shared_config()
        return files if shared is None else (*files, shared.versions())

    def rules_text(self, settings: Settings, receiver: str | None = None) -> str | None:
        """The active rules document (of ``receiver`` when it has its own), or None when
        the default rule applies."""
        if receiver is not None:
            path = self.receiver_rules_path(settings.named_receiving_ae(receiver))
            if path is not None:
                return _read_rules(path, receiver)
        shared = self._shared_config()
        if shared is not None:
            return shared.read(self._own_copy).rules
        try:
            return self.rules_path.read_text()
        except FileNotFoundError:
            return None

    def ruleset(self, settings: Settings) -> RuleSet:
        """The rules in force: ``rules.yaml`` (or the default rule), with the rules of each
        receiver that has a rules file of its own."""
        text = self.rules_text(settings)
        if text is None:
            routing = settings.routing
            main = default_ruleset(routing.group, routing.strategy, routing.mirror)
        else:
            try:
                main = parse_rules(text, [e.name for e in settings.endpoints],
                                   {g for e in settings.endpoints for g in e.groups})
            except RulesError as exc:
                raise ConfigError(f"{self._rules_source()}: {exc}") from None
        return replace(main, by_receiver=self._receiver_rulesets(settings))

    # -- the receivers' own rules --------------------------------------------------------
    def receiver_rules_path(self, receiver: ReceivingAE) -> Path | None:
        """Where the receiver's own rules file is (relative paths: in the state folder);
        None when its rules are ``rules.yaml``'s."""
        if receiver.rules is None:
            return None
        path = Path(receiver.rules).expanduser()
        return path if path.is_absolute() else self.home.root / path

    def _receivers_rules_files(self) -> tuple[Path, ...]:
        if self._receiver_rules is None:
            try:
                settings = self._store_settings()
            except ConfigError:
                return ()  # the reading of the settings reports it
            self._receiver_rules = tuple(
                path for r in settings.receiving_aes()
                if (path := self.receiver_rules_path(r)) is not None)
        return self._receiver_rules

    def _check_receivers_rules(self, changed: Settings) -> None:
        """A configuration change must leave every receiver's own rules valid."""
        try:
            self._receiver_rulesets(changed, missing_ok=True)
        except ConfigError as exc:
            raise ConfigError(f"the change would break the rules of {exc}") from None

    def _receiver_rulesets(self, settings: Settings,
                           missing_ok: bool = False) -> tuple[tuple[str, RuleSet], ...]:
        """Each receiver's own rules, checked against the endpoints; a file that cannot
        be read or is invalid raises ConfigError naming it (``missing_ok``: a missing one
        is left out)."""
        own = [(r.name, path) for r in settings.receiving_aes()
               if (path := self.receiver_rules_path(r)) is not None]
        if not missing_ok:
            self._receiver_rules = tuple(path for _, path in own)
        found: list[tuple[str, RuleSet]] = []
        for name, path in own:
            if missing_ok and not path.exists():
                continue
            try:
                found.append((name, parse_rules(
                    _read_rules(path, name), [e.name for e in settings.endpoints],
                    {g for e in settings.endpoints for g in e.groups})))
            except RulesError as exc:
                raise ConfigError(f"{path} (rules of receiver {name}): {exc}") from None
        return tuple(found)

    # -- shared mode ---------------------------------------------------------------------
    @property
    def shared(self) -> bool:
        """Whether the endpoints and rules are the cluster's (``store.backend: postgresql``)."""
        return self._shared_config() is not None

    def _shared_config(self, local: Settings | None = None) -> SharedConfig | None:
        """The shared documents when ``store`` (of ``local``, else of the settings read
        last) names PostgreSQL; opened at the first use, kept while the section stays."""
        with self._shared_lock:
            if local is None:
                if self._resolved:
                    return self._shared
                try:
                    local = self._store_settings()
                except ConfigError:
                    return None  # the reading of the settings reports it
            store = local.store
            if self._shared is not None and self._shared.store != store:
                self._shared.close()
                self._shared = None
            if store.backend is StoreBackend.POSTGRESQL and self._shared is None:
                self._shared = SharedConfig(store)
            self._resolved = True
            return self._shared

    def _store_settings(self) -> Settings:
        """The settings, for their ``store`` section, without writing a missing file."""
        if self._explicit or self.path.exists():
            return load_settings(self.home, self.path if self._explicit else None)
        return parse_settings({}, str(self.path))

    def _own_copy(self) -> tuple[Endpoints, str | None]:
        """This node's endpoints and rules (None: no rules.yaml), checked: the seed of a
        cluster's shared configuration."""
        own = load_settings(self.home, self.path if self._explicit else None,
                            environment=False)
        try:
            rules = self.rules_path.read_text()
        except FileNotFoundError:
            rules = None
        if rules is not None:
            try:
                parse_rules(rules, [e.name for e in own.endpoints],
                            {g for e in own.endpoints for g in e.groups})
            except RulesError as exc:
                raise ConfigError(f"{self.rules_path}: {exc}") from None
        return settings_to_data(own)["endpoints"], rules

    def _rules_source(self) -> str:
        return "the shared rules" if self.shared else str(self.rules_path)

    def close(self) -> None:
        """Close the shared documents' connections, if any (opened again if used again)."""
        with self._shared_lock:
            if self._shared is not None:
                self._shared.close()

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
        stay valid against the changed endpoints. Shared mode: the endpoint list goes to the
        database (one transaction), then to this node's ``dde.yaml``.
        """
        with self.locked():
            current = load_settings(self.home, self.path if self._explicit else None,
                                    environment=False)
            shared = self._shared_config()
            if shared is not None:
                return self._update_shared(shared, current, change)
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
            self._check_receivers_rules(validated)
            write_atomically(self.path, self._rewritten(current, validated))
            return validated

    def _update_shared(self, shared: SharedConfig, current: Settings,
                       change: Callable[[Settings], Settings]) -> Settings:
        done: list[Settings] = []

        def edit(endpoints: Endpoints, rules: str | None) -> Endpoints:
            changed = change(with_endpoints(current, endpoints, str(self.path)))
            validated = parse_settings(changed.model_dump(mode="python"), str(self.path),
                                       environment=False)
            if rules is not None:
                try:
                    parse_rules(rules, *names_and_groups(settings_to_data(validated)
                                                         ["endpoints"]))
                except RulesError as exc:
                    raise ConfigError(f"the change would break the shared rules: {exc}") \
                        from None
            self._check_receivers_rules(validated)
            done.append(validated)
            endpoints_after: Endpoints = settings_to_data(validated)["endpoints"]
            return endpoints_after

        shared.change_endpoints(edit, self._own_copy)
        write_atomically(self.path, self._rewritten(current, done[-1]))
        return done[-1]

    def _rewritten(self, current: Settings, changed: Settings) -> str:
        """The text of ``dde.yaml`` with ``changed`` in place of ``current``: only what
        changed is rewritten (comments and order stay). Checked by reading it back; should
        that ever differ, the whole file is written anew (a warning says so)."""
        text = self.path.read_text()
        try:
            rewritten = rewrite_yaml(text, settings_to_data(current), settings_to_data(changed))
            again = parse_settings(yaml.safe_load(rewritten), str(self.path), environment=False)
            if settings_to_data(again) == settings_to_data(changed):
                return rewritten
        except (RoundTripYAMLError, yaml.YAMLError, ConfigError) as exc:
            log.warning("%s: could not keep its comments (%s)", self.path, exc)
        log.warning("%s: written anew; its comments are lost", self.path)
        return HEADER + settings_to_yaml(changed)

    def apply_rules(self, text: str, receiver: str | None = None) -> RuleSet:
        """Validate ``text`` against the configured endpoints and make it the active rules
        (``receiver``: that receiver's own rules file).

        Raises :class:`RulesError` (with the line) and leaves the old rules in place; so
        does a ``salt_secret`` this node cannot read (the others read theirs when used).
        Shared mode: the rules go to the database (one transaction), then to this node's
        ``rules.yaml``; a receiver's own rules file is always this node's.
        """
        text = text if text.endswith("\n") else text + "\n"
        if receiver is not None:
            return self._apply_receiver_rules(text, receiver)
        with self.locked():
            shared = self._shared_config()
            if shared is not None:
                checked: list[RuleSet] = []

                def edit(endpoints: Endpoints) -> str:
                    checked.append(parse_rules(text, *names_and_groups(endpoints)))
                    check_secrets(checked[-1], self.home.root, os.environ)
                    return text

                shared.change_rules(edit, self._own_copy)
                write_atomically(self.rules_path, text)
                return checked[-1]
            settings = self.settings()
            ruleset = parse_rules(text, [e.name for e in settings.endpoints],
                                  {g for e in settings.endpoints for g in e.groups})
            check_secrets(ruleset, self.home.root, os.environ)
            write_atomically(self.rules_path, text)
            return ruleset

    def _apply_receiver_rules(self, text: str, name: str) -> RuleSet:
        with self.locked():
            settings = self.settings()
            path = self.receiver_rules_path(settings.named_receiving_ae(name))
            if path is None:
                raise ConfigError(f"receiver {name!r} has no rules file of its own (its rules "
                                  f"are {self.rules_path.name}'s): give its receivers: entry "
                                  f"rules: FILE")
            ruleset = parse_rules(text, [e.name for e in settings.endpoints],
                                  {g for e in settings.endpoints for g in e.groups})
            write_atomically(path, text)
            return ruleset

    def refresh_own_copy(self) -> None:
        """Shared mode: bring this node's ``endpoints:`` in ``dde.yaml`` and its
        ``rules.yaml`` up to the shared configuration (each written only if it differs).
        Never raises: a failure is logged, the files stay as they are."""
        shared = self._shared_config()
        if shared is None:
            return
        try:
            with self.locked():
                state = shared.read(self._own_copy)
                own = load_settings(self.home, self.path if self._explicit else None,
                                    environment=False)
                wanted = with_endpoints(own, state.endpoints, str(self.path))
                if settings_to_data(wanted)["endpoints"] != settings_to_data(own)["endpoints"]:
                    write_atomically(self.path, self._rewritten(own, wanted))
                    log.info("%s: endpoints updated from the shared configuration", self.path)
                self._refresh_rules(state.rules)
        except (ConfigError, OSError) as exc:
            log.warning("could not update this node's copy of the shared configuration: %s",
                        exc)

    def _refresh_rules(self, shared: str | None) -> None:
        try:
            own: str | None = self.rules_path.read_text()
        except FileNotFoundError:
            own = None
        if own == shared:
            return
        if shared is not None:
            write_atomically(self.rules_path, shared)
            log.info("%s: updated from the shared configuration", self.rules_path)
            return
        aside = self.rules_path.with_name(self.rules_path.name + ".not-shared")
        os.replace(self.rules_path, aside)
        log.warning("%s: the cluster has no rules document (the default rule applies); "
                    "this node's rules were moved to %s", self.rules_path, aside)
