"""Why the ledger cannot be opened or written.

```
LedgerError            cannot open or write the ledger; the message says why
 ├── LedgerLocked      another process holds a lock on it (open timeout passed)
 └── LedgerCorrupt     not a database, or PRAGMA quick_check finds damage (left as it is)
```
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class LedgerError(Exception):
    """The ledger cannot be opened or written; the message says why."""


class LedgerLocked(LedgerError):
    """Another process holds a lock on the ledger (it did not free it within the open
    timeout): another router on the same state folder, or a tool with a transaction open."""


class LedgerCorrupt(LedgerError):
    """The ledger file is not a database, or ``PRAGMA quick_check`` finds damage. The file
    is left exactly as it is: nothing is reset."""


_LOCKED_CODES = {"SQLITE_BUSY", "SQLITE_LOCKED"}
_CORRUPT_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def open_error(path: Path, exc: sqlite3.Error) -> LedgerError:
    """The :class:`LedgerError` for a failure to open: locked, corrupt, or other."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")

    def is_one_of(codes: set[str]) -> bool:  # extended codes: SQLITE_BUSY_RECOVERY, …
        return any(name == code or name.startswith(code + "_") for code in codes)

    if is_one_of(_LOCKED_CODES) or "database is locked" in str(exc):
        return LedgerLocked(f"{path}: cannot open the ledger: it is locked by another process "
                            f"({exc}); is another router running with this --home?")
    if is_one_of(_CORRUPT_CODES):
        return LedgerCorrupt(f"{path}: cannot open the ledger: it is damaged ({exc}); it "
                             f"was left as it is - restore it from a backup or move it aside")
    return LedgerError(f"{path}: cannot open the ledger: {exc}")


def damaged(path: Path, problems: list[str]) -> LedgerCorrupt:
    shown = "; ".join(problems[:3]) + (" …" if len(problems) > 3 else "")
    return LedgerCorrupt(f"{path}: cannot open the ledger: it is damaged (quick_check: "
                         f"{shown}); it was left as it is - restore it from a backup or "
                         f"move it aside")
