"""``POST /api/instances``: uploaded Part-10 files (or zips of them) into the same durable
receive path as C-STORE.

Every part is checked before anything is stored: an empty part, an uploaded file that is not
DICOM Part-10, a zip that is not valid, encrypted, or that would expand past the limits (too
many entries, too large in all, or compressed suspiciously well: a zip bomb) refuses the
whole request with a 4xx and stores nothing. In a zip, an entry that is not DICOM (the
README.TXT of a CD export) is skipped and listed as such, like a DICOMDIR. Only then does
each instance go through :meth:`IngestPipeline.ingest`, whose answer (stored, or refused
with the DIMSE status the sender of a C-STORE would get) is reported per file.

Uploaded names are labels in the answer and nothing else: the parts are spooled by the
multipart parser to anonymous temporary files, zips are read in memory entry by entry, and
the spool names its files itself.
"""

from __future__ import annotations

import functools
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, Any

from fastapi import UploadFile

from dde.dicom.part10 import NotPart10, split_part10
from dde.receiving.ingest import Incoming, IngestPipeline
from dde.web.errors import ApiError

WEB_CALLING_AET = "WEB_UPLOAD"
MAX_ZIP_ENTRIES = 10_000
MAX_ZIP_RATIO = 100
"""Largest uncompressed/compressed ratio of an entry bigger than RATIO_FLOOR bytes."""
RATIO_FLOOR = 1024 * 1024
MAX_NAME_LENGTH = 255
READ_CHUNK = 1024 * 1024
MAX_REPORTED_PROBLEMS = 20
DICOMDIR_NAME = "DICOMDIR"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class Part:
    """One instance to take: a label for the answer and how to read its bytes."""

    name: str
    read: Callable[[], bytes]
    in_zip: bool = False
    """A zip entry: skipped (not refused) when it is not DICOM."""


def label(name: str | None, fallback: str) -> str:
    """A printable label of a client-given name (never used as a path)."""
    cleaned = "".join(c for c in (name or "") if c.isprintable())[:MAX_NAME_LENGTH]
    return cleaned or fallback


def _too_large(detail: str) -> ApiError:
    return ApiError(413, "payload_too_large", detail)


def _size_of(stream: IO[bytes]) -> int:
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    return size


def _is_zip(head: bytes) -> bool:
    # a Part-10 preamble is free-form: DICM at 128 wins over a PK signature at 0
    return head.startswith(ZIP_MAGIC) and head[128:132] != b"DICM"


class _Budget:
    """Bytes left of the upload limit, spent by files and (declared) zip entries."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, size: int, what: str) -> None:
        self.left -= size
        if self.left < 0:
            raise _too_large(f"{what} takes the upload past its limit of {self.limit} bytes "
                             "(web.max_upload_bytes)")


def _read_all(stream: IO[bytes]) -> bytes:
    stream.seek(0)
    return stream.read()


def _zip_parts(name: str, stream: IO[bytes], budget: _Budget,
               stack: ExitStack) -> list[Part]:
    try:
        archive = stack.enter_context(zipfile.ZipFile(stream))
        entries = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ApiError(415, "unsupported_media_type", f"{name}: not a valid zip file") from None
    if len(entries) > MAX_ZIP_ENTRIES:
        raise _too_large(f"{name}: {len(entries)} entries; at most {MAX_ZIP_ENTRIES}")
    parts = []
    for info in entries:
        entry = label(info.filename, "entry")
        base = entry.rsplit("/", 1)[-1]
        if entry.startswith("__MACOSX/") or base in (".DS_Store", "Thumbs.db"):
            continue
        if info.flag_bits & 0x1:
            raise ApiError(415, "unsupported_media_type", f"{name}: {entry} is encrypted")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_ZIP_RATIO * max(
                info.compress_size, 1):
            raise _too_large(f"{name}: {entry} expands {info.file_size} bytes from "
                             f"{info.compress_size}: refused as a possible zip bomb")
        budget.spend(info.file_size, f"{name}: {entry}")
        parts.append(Part(f"{name}/{entry}", _entry_reader(archive, info, name, entry),
                          in_zip=True))
    return parts


def _entry_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str,
                  entry: str) -> Callable[[], bytes]:
    def read() -> bytes:
        chunks: list[bytes] = []
        total = 0
        try:
            with archive.open(info) as member:
                while chunk := member.read(READ_CHUNK):
                    total += len(chunk)
                    if total > info.file_size:  # the header lied about the size
                        raise _too_large(f"{name}: {entry} is larger than it declares")
                    chunks.append(chunk)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ApiError(415, "unsupported_media_type",
                           f"{name}: {entry} cannot be read: {exc}") from None
        except NotImplementedError:
            raise ApiError(415, "unsupported_media_type",
                           f"{name}: {entry} uses an unsupported compression") from None
        return b"".join(chunks)

    return read


def collect_parts(files: Sequence[UploadFile], limit: int, stack: ExitStack) -> list[Part]:
    """The instances of the uploaded files (zips expanded), within ``limit`` bytes."""
    budget = _Budget(limit)
    parts: list[Part] = []
    for index, upload in enumerate(files, start=1):
        name = label(upload.filename, f"file-{index}")
        stream = upload.file
        size = _size_of(stream)
        if size == 0:
            raise ApiError(400, "empty_upload", f"{name}: the file is empty")
        head = stream.read(132)
        stream.seek(0)
        if _is_zip(head):
            found = _zip_parts(name, stream, budget, stack)
            if not found:
                raise ApiError(400, "empty_upload", f"{name}: the zip holds no files")
            parts.extend(found)
        else:
            budget.spend(size, name)
            parts.append(Part(name, functools.partial(_read_all, stream)))
    if not parts:
        raise ApiError(400, "empty_upload", "no file in the upload (multipart field 'file')")
    return parts


def check_parts(parts: Sequence[Part]) -> dict[int, str]:
    """Refuse the request (415, nothing stored) unless every uploaded file is a Part-10
    file; zip entries that are not are to be skipped: {index in parts: why}."""
    problems: list[dict[str, str]] = []
    skipped: dict[int, str] = {}
    for index, part in enumerate(parts):
        try:
            split_part10(part.read())
        except NotPart10 as exc:
            if part.in_zip:
                skipped[index] = f"not DICOM Part-10 ({exc}): not an instance"
            else:
                problems.append({"name": part.name, "detail": str(exc)})
    if problems:
        names = ", ".join(p["name"] for p in problems[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ApiError(415, "not_dicom",
                       f"not DICOM Part-10: {names}{more}; nothing was stored",
                       files=problems[:MAX_REPORTED_PROBLEMS])
    return skipped


def ingest_parts(parts: Sequence[Part], pipeline: IngestPipeline, called_aet: str,
                 source_ip: str | None,
                 skipped: dict[int, str] | None = None) -> Iterator[dict[str, Any]]:
    """Each part through the durable receive path (but those ``skipped``: {index: why});
    one result per part."""
    for index, part in enumerate(parts):
        if skipped and index in skipped:
            yield {"name": part.name, "status": "skipped", "dicom_status": None,
                   "detail": skipped[index], "sop_instance_uid": None}
            continue
        started = time.monotonic()
        file = split_part10(part.read())
        if file.sop_class_uid == "1.2.840.10008.1.3.10":  # Media Storage Directory
            yield {"name": part.name, "status": "skipped", "dicom_status": None,
                   "detail": "a DICOMDIR (media directory), not an instance",
                   "sop_instance_uid": file.sop_instance_uid}
            continue
        result = pipeline.ingest(Incoming(
            dataset=file.dataset, transfer_syntax_uid=file.transfer_syntax_uid,
            sop_class_uid=file.sop_class_uid, sop_instance_uid=file.sop_instance_uid,
            calling_aet=WEB_CALLING_AET, called_aet=called_aet, source_ip=source_ip,
            started=started,
        ))
        destinations = [] if result.route is None or result.route.discard else list(
            result.route.destinations + result.route.mirrors)
        yield {"name": part.name, "status": "stored" if result.ok else "refused",
               "dicom_status": result.status, "detail": result.detail,
               "sop_instance_uid": file.sop_instance_uid, "destinations": destinations}


def take_upload(files: Sequence[UploadFile], limit: int, pipeline: IngestPipeline,
                called_aet: str, source_ip: str | None) -> dict[str, Any]:
    with ExitStack() as stack:
        parts = collect_parts(files, limit, stack)
        skipped = check_parts(parts)
        results = list(ingest_parts(parts, pipeline, called_aet, source_ip, skipped))
    counts = {status: sum(r["status"] == status for r in results)
              for status in ("stored", "refused", "skipped")}
    return {**counts, "files": results}
