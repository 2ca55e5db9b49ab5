"""The ``application/dicom`` parts of a STOW-RS request, each written as it arrives into the
file that becomes its spool file.

A part is a Part-10 file. Its first bytes are held until its file meta is complete (a few
hundred bytes; at most :data:`dde.dicom.part10.MAX_FILE_META`); then the file gets the
router's own file meta (as a C-STORE's and an upload's spool file do: implementation UID,
the calling AE as Source AE Title) and the dataset bytes follow exactly as sent, chunk by
chunk. The file is a spool file prepared in advance (only its data is synced at ingest) or,
when none is ready, a new one in the spool's incoming folder (fsync'd and renamed in at
ingest): :meth:`dde.store.spool.Spool.adopt` takes either. Nothing is synced here: a part
is not acknowledged until ingest has made it durable.

A part that is not a Part-10 file is read to its end and dropped, and remembered as such
(the answer lists it as failed); a write that fails (disk full) stops writing that part and
is handed to ingest, which refuses the instance for it (0xA700).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dde.dicom.engine.acceptor import DatasetFile
from dde.dicom.part10 import FileMeta, NotPart10, read_file_meta
from dde.store.spool import encode_file_meta
from dde.web.multipart_related import media_type

DICOM_MEDIA_TYPE = "application/dicom"


class UnsupportedPart(Exception):
    """A part of another media type than application/dicom (metadata and bulk data)."""


class TooManyParts(Exception):
    """More parts than the request may have."""


@dataclass(frozen=True)
class ReceivedPart:
    """One complete part: its file meta and file, or why it is not an instance."""

    number: int
    """1 for the first part of the request."""
    started: float
    """``time.monotonic()`` when the part began (its acknowledgement latency runs from here)."""
    meta: FileMeta | None
    path: Path | None
    """The written file (the router's file meta and the dataset), None when not one."""
    problem: str | None = None
    """Why the part is not a Part-10 file (nothing was kept of it)."""
    write_error: OSError | None = None
    """Why writing the file stopped short: the instance is refused at ingest."""


class DicomPartWriter:
    """A :class:`dde.web.multipart_related.PartSink` that writes each part to a file from
    ``new_path`` (a prepared spool file, or a path in the incoming folder)."""

    def __init__(self, new_path: Callable[[], Path], source_aet: str, max_parts: int) -> None:
        self._new_path = new_path
        self._source_aet = source_aet
        self._max_parts = max_parts
        self.parts: list[ReceivedPart] = []
        self._number = 0
        self._started = 0.0
        self._head = bytearray()
        self._meta: FileMeta | None = None
        self._problem: str | None = None
        self._path: Path | None = None
        self._file: DatasetFile | None = None
        self._write_error: OSError | None = None

    # -- PartSink -------------------------------------------------------------------------------
    def begin(self, headers: Mapping[str, str]) -> None:
        content_type = headers.get("content-type")
        if content_type is not None:
            kind, _ = media_type(content_type)
            if kind != DICOM_MEDIA_TYPE:
                raise UnsupportedPart(kind or "(empty)")
        if self._number >= self._max_parts:
            raise TooManyParts(f"more than {self._max_parts} parts")
        self._number += 1
        self._started = time.monotonic()
        self._head.clear()
        self._meta = None
        self._problem = None
        self._path = None
        self._file = None
        self._write_error = None

    def data(self, chunk: bytes) -> None:
        if self._problem is not None:
            return  # not DICOM: read to its end, kept nowhere
        if self._meta is None:
            self._head += chunk
            self._read_meta(complete=False)
            return
        self._write(chunk)

    def end(self) -> None:
        if self._meta is None and self._problem is None:
            if self._head:
                self._read_meta(complete=True)
            else:
                self._problem = "the part is empty"
        self._close()
        self._head.clear()
        self.parts.append(ReceivedPart(self._number, self._started, self._meta, self._path,
                                       self._problem, self._write_error))

    # -- the file -------------------------------------------------------------------------------
    def _read_meta(self, complete: bool) -> None:
        try:
            meta = read_file_meta(bytes(self._head), complete)
        except NotPart10 as exc:
            self._problem = f"not a DICOM Part-10 file: {exc}"
            self._head.clear()
            return
        if meta is None:
            return
        try:
            header = encode_file_meta(meta.sop_class_uid, meta.sop_instance_uid,
                                      meta.transfer_syntax_uid, self._source_aet)
        except ValueError as exc:  # a UID that is not ASCII, or absurdly long
            self._problem = f"not a DICOM Part-10 file: its file meta is invalid ({exc})"
            self._head.clear()
            return
        self._meta = meta
        self._open(header)
        self._write(bytes(self._head[meta.dataset_offset:]))
        self._head.clear()

    def _open(self, header: bytes) -> None:
        path = self._new_path()
        self._path = path
        try:
            self._file = DatasetFile(path, header)
        except OSError as exc:
            self._write_error = exc

    def _write(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._write_error = self._write_error or self._file.error
            self._file = None

    def discard(self) -> None:
        """Remove every file written (the request failed: none was acknowledged)."""
        self._close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        for part in self.parts:
            if part.path is not None:
                part.path.unlink(missing_ok=True)
        self.parts.clear()
