"""Empty spool files made ready in advance, so that receiving an instance costs one sync.

A received dataset is written straight into its final spool file. Making a file durable
the usual way costs a create, an fsync, a rename and an fsync of its folder per instance;
here a background thread creates files in batches (each batch in one folder, one fsync of
that folder per batch), so that at receive time only the file's data has to be synced
(``fdatasync``: its name is already durable, its new size is flushed with the data).

A prepared file that was never used is empty; one that was being written when the process
died was never acknowledged. Neither has a ledger row, and the router removes both at
start (:meth:`dde.store.spool.Spool.sweep_unrecorded`) before any receiver runs. When the
supply runs dry (a burst faster than the thread), :meth:`PreparedFiles.take` gives a path
in the incoming folder instead, which the spool adopts the usual way.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

BATCH = 32
"""Files created per batch (one folder, one folder fsync)."""
LOW_WATER = 48
"""Below this many ready files, the thread makes another batch."""
HIGH_WATER = 128
"""The thread stops making files at this many."""


def fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PreparedFiles:
    """A supply of empty, durably named files under ``root``'s two-hex-digit folders."""

    def __init__(self, root: Path, fallback: Path, tag: str = "") -> None:
        """``tag``: what every name starts with (the node's, when nodes share the spool)."""
        self.root = root
        self.fallback = fallback
        self._tag = tag
        self._ready: collections.deque[Path] = collections.deque()
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopped.clear()
            self._wanted.set()
            self._thread = threading.Thread(target=self._run, name="spool-prepare",
                                            daemon=True)
            self._thread.start()

    def take(self) -> Path:
        """Where the next received dataset is written: a prepared file, or a new path in
        the fallback (incoming) folder when none is ready."""
        try:
            path = self._ready.popleft()
        except IndexError:
            path = None
        if len(self._ready) < LOW_WATER:
            self._wanted.set()
        if path is not None:
            return path
        return self.fallback / f"{uuid.uuid4().hex}.dcm"

    def is_prepared(self, path: Path) -> bool:
        """Whether ``path`` is one of this spool's final files (a prepared one that was
        taken): it needs no rename and no folder fsync."""
        parent = path.parent
        return parent.parent == self.root and parent != self.fallback

    @property
    def ready(self) -> int:
        return len(self._ready)

    def stop(self) -> None:
        """Stop making files and remove the ones never taken."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stopped.set()
        self._wanted.set()
        if thread is not None:
            thread.join(timeout=5)
        while True:
            try:
                path = self._ready.popleft()
            except IndexError:
                break
            path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wanted.wait()
            self._wanted.clear()
            while not self._stopped.is_set() and len(self._ready) < HIGH_WATER:
                try:
                    self._ready.extend(self._batch())
                except OSError as exc:  # receiving falls back to the incoming folder
                    log.warning("cannot prepare spool files: %s", exc.strerror or exc)
                    self._stopped.wait(1.0)
                    break

    def _batch(self) -> list[Path]:
        prefix = uuid.uuid4().hex[:2]
        folder = self.root / prefix
        if not folder.is_dir():
            folder.mkdir(mode=0o700, exist_ok=True)
            fsync_folder(self.root)
        made: list[Path] = []
        try:
            for _ in range(BATCH):
                path = folder / f"{self._tag}{prefix}{uuid.uuid4().hex[2:]}.dcm"
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                made.append(path)
            fsync_folder(folder)
        except OSError:
            for path in made:
                path.unlink(missing_ok=True)
            raise
        return made
