"""The spool: received instances as DICOM Part-10 files, durable before acknowledgement.

A file is written as ``<name>.part``, fsync'd, renamed to ``<name>.dcm`` and its folder
fsync'd; only then does it count as written. The receiver writes most datasets straight
into files prepared in advance (:mod:`dde.store.prepared_files`), which then need only
their data synced. Bytes are the dataset exactly as received,
behind a file meta header built from the C-STORE request (no decode, no re-encode).

Space is bounded two ways, both checked before a byte is written: ``max_bytes`` caps what the
spool holds (a running total, counted once at start, then kept up to date by writes and
removals), and ``min_free_bytes`` is the free space that must remain on the spool's file
system (``os.statvfs``). A write refused by either, or failing with ENOSPC/EDQUOT, raises
:class:`SpoolFull`; the receiver answers 0xA700 and takes the next instance again once
delivered files have been removed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from dde.dicom import part10
from dde.store.prepared_files import PreparedFiles, fsync_folder

log = logging.getLogger(__name__)

IMPLEMENTATION_VERSION_NAME = "DDE_010"
INCOMING = "incoming"
RECOUNT_SECONDS = 1.0


class SpoolError(Exception):
    """The spool could not take the file (disk full, permissions, …)."""


class SpoolFull(SpoolError):
    """No room: the spool's byte cap, the free-space floor, or the file system itself."""


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def spool_error(exc: OSError) -> SpoolError:
    """The spool's error for a failed write: :class:`SpoolFull` when the disk (or quota) is
    full, :class:`SpoolError` otherwise."""
    kind = SpoolFull if exc.errno in _NO_SPACE else SpoolError
    return kind(f"spool write failed: {exc.strerror or exc}")


@dataclass(frozen=True)
class SpooledFile:
    relative_path: str
    size: int


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     source_aet: str | None = None) -> bytes:
    """The preamble and file meta of a spool file (the router's implementation identity)."""
    return part10.encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid,
                                   PYDICOM_IMPLEMENTATION_UID, IMPLEMENTATION_VERSION_NAME,
                                   source_aet)


class Spool:
    def __init__(self, root: Path, max_bytes: int = 0, min_free_bytes: int = 0,
                 statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
                 shared: bool = False, node: str = "") -> None:
        """``max_bytes`` 0: no cap; ``min_free_bytes`` 0: no free-space check. ``shared``:
        other processes write and remove spool files too, so the total is counted again
        from the files before a write is refused for the cap, and when the last count is
        older than :data:`RECOUNT_SECONDS`. ``node``: this router's name when several
        nodes share the folder: its files' names start with it, it has its own incoming
        folder, and its clean-ups at start touch only its own files."""
        self.node = node
        self._tag = f"{node}-" if node else ""
        self.shared = shared
        self._in_flight = 0
        self._counted_at = time.monotonic()
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # patient data: owner only
        if self.root.stat().st_mode & 0o077:
            os.chmod(self.root, 0o700)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._statvfs = statvfs
        self._known_dirs: set[str] = set()
        self._lock = threading.Lock()
        self._used = self._scan()
        self.prepared = PreparedFiles(self.root, self.incoming_dir, self._tag)

    @property
    def used_bytes_cached(self) -> int:
        """:attr:`used_bytes` as last counted (no look at the files)."""
        with self._lock:
            return self._used

    @property
    def used_bytes(self) -> int:
        """Bytes of the spool's files, plus those of writes in progress (a shared spool
        counts its files again)."""
        if self.shared:
            return self.recount()
        with self._lock:
            return self._used

    def _spool_files(self) -> Iterator[Path]:
        """The spool's files (prepared ones included), not the incoming folders'."""
        for path in self.root.glob("*/*.dcm"):
            if not path.parent.name.startswith(INCOMING):
                yield path

    def _scan(self) -> int:
        total = 0
        for path in self._spool_files():
            try:
                total += path.stat().st_size
            except OSError:
                continue
        return total

    def path_of(self, relative_path: str) -> Path:
        return self.root / relative_path

    def _reserve(self, size: int, written: Path | None = None) -> None:
        """Count ``size`` bytes in, or raise :class:`SpoolFull` when there is no room.
        ``written``: the bytes are already in that spool file (a prepared one), which a
        recount must therefore leave out."""
        if self.shared and self.max_bytes and (
                self.used_bytes_cached + size > self.max_bytes
                or time.monotonic() - self._counted_at >= RECOUNT_SECONDS):
            self.recount(leaving_out=written)  # other processes write and remove files too
        with self._lock:
            if self.max_bytes and self._used + size > self.max_bytes:
                raise SpoolFull(f"spool full: {self._used} of {self.max_bytes} bytes in use, "
                                f"{size} more would exceed spool.max_bytes")
            if self.min_free_bytes:
                try:
                    stat = self._statvfs(self.root)
                except OSError as exc:
                    raise SpoolError(f"cannot read the spool's free space: "
                                     f"{exc.strerror or exc}") from None
                free = stat.f_bavail * stat.f_frsize
                if free - size < self.min_free_bytes:
                    raise SpoolFull(f"spool disk full: {free} bytes free, {size} more would "
                                    f"go below spool.min_free_bytes ({self.min_free_bytes})")
            self._used += size
            self._in_flight += size

    def _settle(self, size: int) -> None:
        """The reserved bytes are in a spool file now (a recount sees them)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - size)

    def _release(self, size: int) -> None:
        """The reserved bytes were not written after all."""
        with self._lock:
            self._used = max(0, self._used - size)
            self._in_flight = max(0, self._in_flight - size)

    def write(self, file_meta: bytes, dataset: bytes) -> SpooledFile:
        """Write one Part-10 file durably; raise :class:`SpoolError` if it is not on disk
        (:class:`SpoolFull` when there is no room for it)."""
        size = len(file_meta) + len(dataset)
        self._reserve(size)
        folder, name = self._new_name()
        directory = self.root / folder
        final = directory / f"{name}.dcm"
        part = directory / f"{name}.part"
        try:
            self._ensure_folder(folder)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(file_meta + dataset) if len(dataset) < 65536 else None
                if view is not None:
                    _write_all(fd, view)
                else:
                    _write_all(fd, memoryview(file_meta))
                    _write_all(fd, memoryview(dataset))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(part, final)
            fsync_folder(directory)
        except OSError as exc:
            self._release(size)
            part.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise spool_error(exc) from None
        self._settle(size)
        return SpooledFile(f"{folder}/{name}.dcm", size)

    @property
    def incoming_dir(self) -> Path:
        """Where the receiver writes datasets as they arrive (same file system as the
        spool, so :meth:`adopt` is a rename)."""
        return self.root / (f"{INCOMING}-{self.node}" if self.node else INCOMING)

    def _new_name(self) -> tuple[str, str]:
        """A new spool file's folder and name (without suffix)."""
        name = uuid.uuid4().hex
        return name[:2], f"{self._tag}{name}"

    def _own(self, path: Path) -> bool:
        """Whether ``path`` is this node's (every file is, without a node name)."""
        return path.name.startswith(self._tag)

    def adopt(self, received: Path) -> SpooledFile:
        """Make a complete Part-10 file written by the receiver a spool file: a prepared
        file (:attr:`prepared`) only has its data synced; one written elsewhere (the
        incoming folder) is fsync'd, renamed in and its folder fsync'd. Raise
        :class:`SpoolError` (:class:`SpoolFull`) as :meth:`write` does; the instance is
        then not in the spool (the caller removes ``received``)."""
        try:
            size = received.stat().st_size
        except OSError as exc:
            raise SpoolError(f"received file vanished: {exc.strerror or exc}") from None
        in_place = self.prepared.is_prepared(received)
        self._reserve(size, written=received if in_place else None)
        if in_place:
            return self._adopt_in_place(received, size)
        folder, name = self._new_name()
        directory = self.root / folder
        final = directory / f"{name}.dcm"
        try:
            self._ensure_folder(folder)
            fd = os.open(received, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o600)  # a file written elsewhere may have the umask's mode
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.rename(received, final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_durably(received, final)
            fsync_folder(directory)
        except OSError as exc:
            self._release(size)
            final.unlink(missing_ok=True)
            raise spool_error(exc) from None
        self._settle(size)
        return SpooledFile(f"{folder}/{name}.dcm", size)

    def _adopt_in_place(self, received: Path, size: int) -> SpooledFile:
        try:
            fd = os.open(received, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # the name is durable already; the size goes with the data
            finally:
                os.close(fd)
        except OSError as exc:
            self._release(size)
            raise spool_error(exc) from None
        self._settle(size)
        return SpooledFile(f"{received.parent.name}/{received.name}", size)

    def sweep_unrecorded(self, recorded: set[str]) -> int:
        """Remove spool files the ledger does not know: prepared files never used, and
        files whose instance was never committed (so never acknowledged) when the process
        stopped. Only while no receiver runs; return how many were removed."""
        removed = 0
        for path in self._spool_files():
            if not self._own(path) or f"{path.parent.name}/{path.name}" in recorded:
                continue
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            self.recount()
        return removed

    def _ensure_folder(self, folder: str) -> None:
        if folder not in self._known_dirs:
            (self.root / folder).mkdir(mode=0o700, exist_ok=True)
            fsync_folder(self.root)
            self._known_dirs.add(folder)

    @staticmethod
    def _copy_durably(source: Path, target: Path) -> None:
        part = target.with_suffix(".part")
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with source.open("rb") as reader, os.fdopen(fd, "wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
                writer.flush()
                os.fsync(writer.fileno())
            os.rename(part, target)
        finally:
            part.unlink(missing_ok=True)

    def remove(self, relative_path: str) -> None:
        path = self.path_of(relative_path)
        try:
            size = path.stat().st_size
        except OSError:
            return  # already gone: it was never counted, or was released when it went
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove spool file %s: %s", relative_path, exc.strerror)
            return
        with self._lock:
            self._used = max(0, self._used - size)

    def discard_partials(self) -> int:
        """Remove ``.part`` files and incoming datasets left by a crash: they were never
        acknowledged. Only while no receiver process runs."""
        removed = 0
        for part in [*self.root.glob("*/*.part"), *self.incoming_dir.glob("*")]:
            if not self._own(part) and part.parent != self.incoming_dir:
                continue  # another node's write in progress
            part.unlink(missing_ok=True)
            removed += 1
        return removed

    def recount(self, leaving_out: Path | None = None) -> int:
        """Count the spool's bytes again from the files (other processes write and remove
        them too; files being written into count as far as they are written); return the
        new total. ``leaving_out``: a file whose bytes are being reserved now."""
        total = self._scan()
        if leaving_out is not None:
            try:
                total -= leaving_out.stat().st_size
            except OSError:
                pass
        with self._lock:
            self._counted_at = time.monotonic()
            self._used = total + self._in_flight
            return self._used


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
