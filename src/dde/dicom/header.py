"""Header-only parsing of a received dataset, with a structural check of the whole.

The router never decodes pixel data. It walks every top-level element of the encoded
dataset once (pydicom's element generator, no value conversion) to prove the dataset is
structurally whole — a truncated or unparsable dataset is refused — and keeps the elements
before Pixel Data as the header the routing rules see. Pixel Data itself is checked from its
element and item headers (:mod:`dde.dicom.pixels`): odd-length encapsulated fragments and
native pixel data shorter than the image geometry are refused; a dataset without Pixel Data
is accepted, as the PACS accepts it.

A Deflated Explicit VR Little Endian dataset is inflated in 1 MiB steps and refused once it
grows beyond :func:`inflate_limit` (64 times its compressed size, at least 64 MiB, at most
2 GiB): a deflate bomb costs at most that much memory, never its full inflated size.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from dde.dicom.pixels import (
    NATIVE_SYNTAXES,
    fragments_problem,
    native_length_problem,
    raw_value,
)

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = Tag(0x7FE0, 0x0010)
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"


class BrokenDataset(Exception):
    """The encoded dataset is structurally broken; the message says how (no patient data)."""


@dataclass(frozen=True)
class InstanceHeader:
    """What the router knows of an instance: its identity and its header elements."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    dataset: Dataset = field(repr=False, compare=False)


INFLATE_RATIO = 64
"""A deflated dataset may inflate to this many times its compressed size ..."""
MIN_INFLATE_LIMIT = 64 << 20
"""... but always to at least 64 MiB (a blank image deflates far beyond 64:1) ..."""
MAX_INFLATE_LIMIT = 2 << 30
"""... and never to more than 2 GiB."""
_INFLATE_CHUNK = 1 << 20


def inflate_limit(compressed_size: int) -> int:
    """The default bound on what a deflated dataset of ``compressed_size`` bytes may inflate
    to: ``INFLATE_RATIO`` times its size, at least ``MIN_INFLATE_LIMIT``, at most
    ``MAX_INFLATE_LIMIT``. A deflate bomb (up to about 1000:1) is refused after inflating at
    most this much, never allocated whole."""
    return min(MAX_INFLATE_LIMIT, max(MIN_INFLATE_LIMIT, INFLATE_RATIO * compressed_size))


def _inflate(encoded: bytes, limit: int) -> bytes:
    """Inflate a raw deflate stream in chunks, refusing it once it exceeds ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    pending: bytes = encoded
    try:
        while not inflater.eof:
            wanted = min(_INFLATE_CHUNK, limit + 1 - len(inflated))
            chunk = inflater.decompress(pending, wanted)
            inflated += chunk
            if len(inflated) > limit:
                raise BrokenDataset(
                    f"deflated dataset of {len(encoded)} bytes inflates to more than the "
                    f"{limit} bytes accepted (a deflate bomb?)")
            pending = inflater.unconsumed_tail
            if not pending and len(chunk) < wanted:
                break  # all input consumed and no output pending: the stream stops here
    except zlib.error as exc:
        raise BrokenDataset(f"deflated dataset cannot be inflated: {exc}") from None
    if not inflater.eof:
        raise BrokenDataset("deflated dataset is truncated (no end of the deflate stream)")
    return bytes(inflated)


def _text(dataset: Dataset, keyword: str) -> str | None:
    raw = _plain_ascii(dataset, keyword)
    if raw is not None:
        return raw.strip(" \0") or None
    try:
        value = dataset.get(keyword)
    except Exception:  # a malformed value must not stop routing on the others
        return None
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _plain_ascii(dataset: Dataset, keyword: str) -> str | None:
    """The value of a not yet converted element when its bytes are plain single-valued
    ASCII text (what nearly every header carries): read without pydicom's conversion and
    validation (about half of a small instance's header parse). None: ask pydicom."""
    raw = raw_value(dataset, keyword)
    if raw is None:
        return None
    value = raw[1]
    if not value.isascii() or b"\\" in value:
        return None
    return value.decode("ascii")


def parse_header(encoded: bytes, transfer_syntax_uid: str,
                 max_inflated: int | None = None) -> InstanceHeader:
    """Check ``encoded`` (a dataset without file meta) and return its header.

    Raises :class:`BrokenDataset` when the dataset is empty, truncated inside an element,
    or cannot be walked element by element, and when a deflated dataset inflates to more
    than ``max_inflated`` bytes (default: :func:`inflate_limit` of its size).
    """
    syntax = UID(transfer_syntax_uid)
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        limit = inflate_limit(len(encoded)) if max_inflated is None else max_inflated
        body = _inflate(encoded, limit)
    else:
        body = encoded
    return _walk(io.BytesIO(body), 0, len(body), syntax, defer_size=None)


def parse_header_file(stream: BinaryIO, start: int, end: int, transfer_syntax_uid: str,
                      max_inflated: int | None = None) -> InstanceHeader:
    """:func:`parse_header` for a dataset stored in a file from offset ``start`` to its
    end (``end``, the size of the file): values larger than :data:`DEFER_SIZE` are skipped,
    not read, so a 1 GB instance costs a few pages of memory. A deflated dataset is read
    and inflated whole (bounded as in :func:`parse_header`)."""
    syntax = UID(transfer_syntax_uid)
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        stream.seek(start)
        return parse_header(stream.read(end - start), transfer_syntax_uid, max_inflated)
    return _walk(stream, start, end, syntax, defer_size=DEFER_SIZE)


DEFER_SIZE = 1 << 16
"""Values at least this long are skipped by :func:`parse_header_file` (pixel data, large
private blobs); they never reach the routing rules."""


def _walk(stream: BinaryIO, start: int, end: int, syntax: UID,
          defer_size: int | None) -> InstanceHeader:
    # Every transfer syntax defined after the first three is explicit VR little endian; a
    # syntax newer than pydicom (e.g. deflated image frames) is read that way.
    implicit_vr = syntax.is_implicit_VR if syntax.is_transfer_syntax else False
    little_endian = syntax.is_little_endian if syntax.is_transfer_syntax else True
    if end <= start:
        raise BrokenDataset("the dataset is empty")

    stream.seek(start)
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    end_of_last_element = start
    previous: int = -1
    pixel_data: tuple[int, int, int] | None = None  # value start, length, element end
    try:
        for element in data_element_generator(
            stream, implicit_vr, little_endian, defer_size=defer_size
        ):
            deferred = False
            if isinstance(element, RawDataElement):
                if not implicit_vr and element.VR is None:
                    raise BrokenDataset(
                        f"element {element.tag} has no valid VR in an explicit VR transfer "
                        "syntax (implicit VR data sent as explicit?)")
                length = element.length
                value = element.value
                deferred = value is None and length not in (0, UNDEFINED_LENGTH)
                if length != UNDEFINED_LENGTH and value is not None and len(value) != length:
                    raise BrokenDataset(
                        f"element {element.tag} is truncated "
                        f"({len(value)} of {length} bytes present)"
                    )
            tag = int(element.tag)
            if tag <= previous:
                raise BrokenDataset(f"element {element.tag} is out of order")
            previous = tag
            end_of_last_element = stream.tell()
            if end_of_last_element > end:
                raise BrokenDataset(f"element {element.tag} is truncated "
                                    f"({end_of_last_element - end} bytes missing)")
            if tag < PIXEL_DATA and not deferred:
                elements[element.tag] = element
            elif tag == PIXEL_DATA and isinstance(element, RawDataElement):
                pixel_data = (element.value_tell, element.length, end_of_last_element)
    except BrokenDataset:
        raise
    except Exception as exc:  # pydicom raises many types on garbage; all mean "broken"
        raise BrokenDataset(f"the dataset cannot be parsed: {type(exc).__name__}") from None
    if end_of_last_element != end:
        raise BrokenDataset(
            f"{end - end_of_last_element} trailing bytes do not form a whole element"
        )
    if not elements:
        raise BrokenDataset("the dataset holds no header elements")

    dataset = Dataset(elements)
    dataset.set_original_encoding(implicit_vr, little_endian, None)
    if pixel_data is not None:
        _check_pixel_data(stream, pixel_data, dataset, syntax, little_endian)
    sop_class = _text(dataset, "SOPClassUID") or ""
    sop_instance = _text(dataset, "SOPInstanceUID") or ""
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=str(syntax),
        study_instance_uid=_text(dataset, "StudyInstanceUID"),
        series_instance_uid=_text(dataset, "SeriesInstanceUID"),
        patient_id=_text(dataset, "PatientID"),
        accession_number=_text(dataset, "AccessionNumber"),
        modality=_text(dataset, "Modality"),
        dataset=dataset,
    )


def _check_pixel_data(stream: BinaryIO, pixel_data: tuple[int, int, int], dataset: Dataset,
                      syntax: UID, little_endian: bool) -> None:
    """Refuse Pixel Data no DCMTK-based PACS can read: odd-length fragments (encapsulated),
    fewer bytes than the geometry declares (native). Reads item headers only."""
    start, length, end = pixel_data
    if length == UNDEFINED_LENGTH:
        problem = fragments_problem(stream, start, end, little_endian)
    elif str(syntax) in NATIVE_SYNTAXES:
        problem = native_length_problem(dataset, length)
    else:
        problem = None  # defined length in an encapsulated syntax: in doubt, accepted
    if problem is not None:
        raise BrokenDataset(problem)
