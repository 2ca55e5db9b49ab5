"""Datasets streamed to disk as they arrive, and what a full disk does to them.

In a receiver process pynetdicom writes every C-STORE dataset to a temporary file fragment by
fragment (``STORE_RECV_CHUNKED_DATASET``), so a 1 GB instance never sits in memory; the
spool then adopts the file with a rename. pynetdicom writes those files from inside its
PDU handling, where a write error (ENOSPC) would abort the association. The file object
given to pynetdicom here remembers the error instead and drops the rest of the dataset; the
C-STORE handler asks :func:`write_failure` and answers 0xA700, as for any full spool.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages

_lock = threading.Lock()
_failures: dict[str, OSError] = {}


class IncomingFile:
    """A ``NamedTemporaryFile`` (``delete=False``) whose write errors are kept, not raised."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._file = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115
        self.name = self._file.name
        self.failed = False

    @property
    def file(self) -> IncomingFile:  # pynetdicom flushes ``.file`` after each fragment
        return self

    def _failure(self, exc: OSError) -> None:
        self.failed = True
        with _lock:
            _failures[self.name] = exc

    def write(self, data: bytes) -> int:
        if not self.failed:
            try:
                self._file.write(data)
            except OSError as exc:
                self._failure(exc)
        return len(data)

    def flush(self) -> None:
        if not self.failed:
            try:
                self._file.flush()
            except OSError as exc:
                self._failure(exc)

    def close(self) -> None:
        # pynetdicom closes the file after the C-STORE handler answered: an error now has
        # nobody to tell (the dataset was complete and flushed, or already refused).
        try:
            self._file.close()
        except OSError:
            pass


def stream_datasets_to(folder: Path) -> None:
    """From now on, let pynetdicom write received datasets to files in ``folder`` (for the
    whole process)."""
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(folder)
    _config.STORE_RECV_CHUNKED_DATASET = True
    setattr(dimse_messages, "NamedTemporaryFile", IncomingFile)  # noqa: B010


def write_failure(path: Path | str) -> OSError | None:
    """The error that cut the dataset streamed to ``path`` short, if any (asked once)."""
    with _lock:
        return _failures.pop(str(path), None)
