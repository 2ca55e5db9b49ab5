"""Named secrets a configuration refers to by name, never by value: the de-identification
salt (``deidentify: {salt_secret: NAME}`` in a rule) is the first.

A secret ``NAME`` is the environment variable ``DDE_SECRET_NAME`` (upper case, ``-`` as
``_``) when it is set, else the file ``$DDE_HOME/secrets/NAME`` (a mounted secret; read
each time it is asked for, so a rotated file is picked up at the next ``rules apply``).
The value is never logged nor put in an error message; messages name where it was looked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SECRETS_FOLDER = "secrets"
ENV_PREFIX = "DDE_SECRET_"


class SecretError(Exception):
    """A named secret is missing, unreadable or empty; the message says where it was
    looked for, never its value."""


def valid_secret_name(name: str) -> bool:
    """A name usable as a file name and in a variable name: letters, digits, ``_``, ``-``."""
    return bool(SECRET_NAME.match(name))


def secret_variable(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")


def secret_file(name: str, home: Path) -> Path:
    return home / SECRETS_FOLDER / name


def read_secret(name: str, home: Path, environ: Mapping[str, str]) -> bytes:
    """The secret's bytes (surrounding whitespace stripped): the variable first, the file
    under the state folder ``home`` second."""
    if not valid_secret_name(name):
        raise SecretError(f"secret name {name!r}: letters, digits, '_' and '-' only")
    variable = secret_variable(name)
    if variable in environ:
        value = environ[variable].strip().encode("utf-8")
        if not value:
            raise SecretError(f"secret {name!r}: the variable {variable} is empty")
        return value
    path = secret_file(name, home)
    try:
        value = path.read_bytes().strip()
    except FileNotFoundError:
        raise SecretError(f"secret {name!r}: neither the variable {variable} nor the file "
                          f"{path} exists") from None
    except OSError as exc:
        raise SecretError(f"secret {name!r}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise SecretError(f"secret {name!r}: the file {path} is empty")
    return value
