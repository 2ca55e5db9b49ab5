"""The ``deidentify:`` action of a rule, validated: what ``rules.yaml`` may say and the
:class:`~dde.dicom.deidentify.Profile` it becomes.

```yaml
  - name: research
    when: {StudyDescription: {regex: "(?i)trial"}}
    deidentify: {profile: basic, options: [retain-longitudinal-dates], salt_secret: research}
    route: [RESEARCH]
    continue: true
```

``retain-safe-private`` takes the list of private attributes known to be safe
(``safe_private: ["GEMS_PARM_01 (0043,xx39)"]``): no library ships the standard's.

The rules parser owns line numbers: :func:`parse_deidentify` returns the message of what is
wrong (to be raised with the rule's line), or the action. The salt is read apart
(:func:`load_profile`), when the rules are applied, from a named secret
(:mod:`dde.config.secrets`): the variable ``DDE_SECRET_<NAME>`` or the file
``$DDE_HOME/secrets/<NAME>``. It never appears in ``rules.yaml``, a message or a log.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dde.config.secrets import SecretError, read_secret, valid_secret_name
from dde.dicom.deid_table import DeidOption
from dde.dicom.deidentify import (
    OptionError,
    Profile,
    SafePrivate,
    check_safe_private,
    parse_options,
    parse_safe_private,
)

PROFILES = ("basic",)
KEYS = ("profile", "options", "salt_secret", "allow_burned_in", "safe_private")


@dataclass(frozen=True)
class DeidentifyAction:
    """A rule's de-identification, before its salt is read."""

    options: frozenset[DeidOption]
    salt_secret: str
    allow_burned_in: bool = False
    profile_name: str = "basic"
    safe_private: frozenset[SafePrivate] = frozenset()

    def profile(self, salt: bytes) -> Profile:
        return Profile(salt=salt, options=self.options, allow_burned_in=self.allow_burned_in,
                       safe_private=self.safe_private)


def parse_deidentify(value: object) -> DeidentifyAction | str:
    """``{profile: basic, options: [...], salt_secret: NAME, allow_burned_in: false,
    safe_private: ["CREATOR (gggg,xxyy)", ...]}`` (the last with ``retain-safe-private``
    only); a message starting ``deidentify:`` when it is not valid."""
    if not isinstance(value, Mapping):
        return "deidentify: a mapping {profile: basic, options: [...], salt_secret: NAME}"
    unknown = sorted(str(k) for k in value if k not in KEYS)
    if unknown:
        return f"deidentify: unknown key {unknown[0]!r} ({', '.join(KEYS)})"
    profile = value.get("profile", "basic")
    if profile not in PROFILES:
        return f"deidentify: unknown profile {profile!r} ({', '.join(PROFILES)})"
    names = value.get("options", [])
    if names is None:
        names = []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "deidentify: options is a list of option names"
    listed = value.get("safe_private", [])
    if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
        return "deidentify: safe_private is a list like ['GEMS_PARM_01 (0043,xx39)']"
    try:
        options = parse_options(names)
        safe = frozenset(parse_safe_private(text) for text in listed)
        check_safe_private(options, safe)
    except OptionError as exc:
        return f"deidentify: {exc}"
    secret = value.get("salt_secret")
    if not isinstance(secret, str) or not valid_secret_name(secret):
        return ("deidentify: salt_secret names the secret holding the salt (letters, digits, "
                "'_' and '-'): the variable DDE_SECRET_<NAME> or the file "
                "$DDE_HOME/secrets/<NAME>")
    allow = value.get("allow_burned_in", False)
    if not isinstance(allow, bool):
        return "deidentify: allow_burned_in takes true or false"
    return DeidentifyAction(options=options, salt_secret=secret, allow_burned_in=allow,
                            profile_name=str(profile), safe_private=safe)


def load_profile(action: DeidentifyAction, home: Path,
                 environ: Mapping[str, str]) -> Profile:
    """The profile with its salt read from the named secret; :class:`SecretError` (its
    message names where it looked, never the value) when it cannot be read."""
    return action.profile(read_secret(action.salt_secret, home, environ))


def resolve_deidentify(value: object, home: Path,
                       environ: Mapping[str, str]) -> Profile | str:
    """Both steps at once, for ``rules apply``: the profile, or the message of what is
    wrong (the mapping or the secret)."""
    action = parse_deidentify(value)
    if isinstance(action, str):
        return action
    try:
        return load_profile(action, home, environ)
    except SecretError as exc:
        return f"deidentify: {exc}"


def describe(action: DeidentifyAction) -> str:
    """How a rule de-identifies, as ``dde where`` and the rule tester show it (no patient
    data, no salt): ``profile basic, options retain-uids, …``."""
    options = sorted(o.value for o in action.options)
    text = f"profile {action.profile_name}, options {', '.join(options) or 'none'}"
    if action.safe_private:
        text += f", safe private {', '.join(sorted(str(s) for s in action.safe_private))}"
    return text + (", burned-in annotation allowed" if action.allow_burned_in else "")


class Profiles:
    """Each rule action's profile, its salt read once (from the secret, when first
    needed) and kept until :meth:`clear` (new rules: a rotated secret is read again). A
    secret that cannot be read is not remembered: :class:`SecretError` each time."""

    def __init__(self, home: Path, environ: Mapping[str, str]) -> None:
        self._home = home
        self._environ = environ
        self._lock = threading.Lock()
        self._profiles: dict[DeidentifyAction, Profile] = {}

    def __call__(self, action: DeidentifyAction) -> Profile:
        with self._lock:
            found = self._profiles.get(action)
        if found is None:
            found = load_profile(action, self._home, self._environ)
            with self._lock:
                self._profiles[action] = found
        return found

    def clear(self) -> None:
        with self._lock:
            self._profiles.clear()
