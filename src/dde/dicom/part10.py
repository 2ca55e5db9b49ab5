"""A DICOM Part-10 file split into what a C-STORE carries: the UIDs of its file meta and
the encoded dataset, untouched (no decode, no re-encode).

Used where instances arrive as files rather than over DIMSE (web upload, route explain).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.filereader import _read_file_meta_info, read_preamble


class NotPart10(Exception):
    """The bytes are not a DICOM Part-10 file the router can take; the message says why
    (what is missing, not "not a Part-10 file" again: the caller's message says that)."""


@dataclass(frozen=True)
class Part10:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset: bytes
    """The encoded dataset after the file meta, exactly as in the file."""


def split_part10(raw: bytes) -> Part10:
    """Split a Part-10 file; raise :class:`NotPart10` unless it has a preamble, a file
    meta with SOP class, SOP instance and transfer syntax UIDs, and a dataset after it."""
    if not raw:
        raise NotPart10("the file is empty")
    stream = io.BytesIO(raw)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception:
        raise NotPart10("no DICM preamble or file meta") from None
    values = {}
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                    "TransferSyntaxUID"):
        value = str(getattr(meta, keyword, "") or "").strip()
        if not value:
            raise NotPart10(f"the file meta has no {keyword}")
        values[keyword] = value
    dataset = raw[stream.tell():]
    if not dataset:
        raise NotPart10("the file has a file meta but no dataset")
    return Part10(values["MediaStorageSOPClassUID"], values["MediaStorageSOPInstanceUID"],
                  values["TransferSyntaxUID"], dataset)


def dataset_offset(stream: BinaryIO) -> int:
    """Where the dataset of the Part-10 file open in ``stream`` begins (after its file
    meta); raise :class:`NotPart10` if it has no preamble and file meta."""
    stream.seek(0)
    try:
        read_preamble(stream, False)
        _read_file_meta_info(stream)
    except Exception:
        raise NotPart10("no DICM preamble or file meta") from None
    return stream.tell()
