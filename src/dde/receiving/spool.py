"""The spool: received instances as DICOM Part-10 files, durable before acknowledgement.

A file is written as ``<name>.part``, fsync'd, renamed to ``<name>.dcm`` and its folder
fsync'd; only then does it count as written. Bytes are the dataset exactly as received,
behind a file meta header built from the C-STORE request (no decode, no re-encode).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

log = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"
IMPLEMENTATION_VERSION_NAME = "DDE_010"


class SpoolError(Exception):
    """The spool could not take the file (disk full, permissions, …)."""


@dataclass(frozen=True)
class SpooledFile:
    relative_path: str
    size: int


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     source_aet: str | None = None) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_aet:
        meta.SourceApplicationEntityTitle = source_aet
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return PREAMBLE + buffer.getvalue()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[str] = set()

    def path_of(self, relative_path: str) -> Path:
        return self.root / relative_path

    def write(self, file_meta: bytes, dataset: bytes) -> SpooledFile:
        """Write one Part-10 file durably; raise :class:`SpoolError` if it is not on disk."""
        name = uuid.uuid4().hex
        folder = name[:2]
        directory = self.root / folder
        final = directory / f"{name}.dcm"
        part = directory / f"{name}.part"
        try:
            if folder not in self._known_dirs:
                directory.mkdir(exist_ok=True)
                _fsync_dir(self.root)
                self._known_dirs.add(folder)
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
            _fsync_dir(directory)
        except OSError as exc:
            part.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            raise SpoolError(f"spool write failed: {exc.strerror or exc}") from None
        return SpooledFile(f"{folder}/{name}.dcm", len(file_meta) + len(dataset))

    def remove(self, relative_path: str) -> None:
        try:
            self.path_of(relative_path).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove spool file %s: %s", relative_path, exc.strerror)

    def discard_partials(self) -> int:
        """Remove ``.part`` files left by a crash: they were never acknowledged."""
        removed = 0
        for part in self.root.glob("*/*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        return removed


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
