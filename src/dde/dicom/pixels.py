"""Checks of Pixel Data (7FE0,0010) from its element header and item headers only.

A PACS built on DCMTK cannot read an encapsulated fragment of odd length (PS3.5 A.4: every
item has an even length) nor native pixel data shorter than the image geometry declares (a
file cut short and re-encoded by its sender). The receiver refuses both; it never decodes
pixel data and never reads it into memory for this: native pixel data is judged by its
length, encapsulated pixel data by the item headers, read by seeking from one to the next.

Never stricter than the PACS on complete data: when in doubt (float pixel data, missing or
unreadable geometry, a transfer syntax we do not know as native) the data is accepted.
Each function returns the reason for a refusal (short, no patient data) or ``None``.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

NATIVE_SYNTAXES = frozenset({
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
})
"""Transfer syntaxes whose Pixel Data is native (not encapsulated)."""

ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
_SUBSAMPLED_422 = {"YBR_FULL_422"}


def raw_value(dataset: Dataset, keyword: str) -> tuple[str | None, bytes] | None:
    """(VR as read, value bytes) of an element pydicom has not converted yet, its value in
    memory; None otherwise (then ask pydicom for the value)."""
    tag = Tag(keyword)
    if tag not in dataset:
        return None
    element = dataset.get_item(tag)
    if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
        return None
    return element.VR, element.value


def _raw_number(dataset: Dataset, keyword: str) -> int | None:
    """A US value (or an IS one) read from the element's bytes without pydicom's conversion;
    None when it is not a plain single value of that kind (then pydicom reads it)."""
    raw = raw_value(dataset, keyword)
    if raw is None:
        return None
    vr, value = raw
    if vr in (None, "US") and len(value) == 2 and keyword != "NumberOfFrames":
        little_endian = dataset.original_encoding[1] is not False
        return int.from_bytes(value, "little" if little_endian else "big")
    if vr in (None, "IS") and keyword == "NumberOfFrames":
        text = value.strip(b" \0")
        if text.isdigit():
            return int(text)
    return None


def _number(dataset: Dataset, keyword: str) -> int | None:
    """A numeric header value, or ``None`` when absent, empty, multi-valued or unreadable."""
    fast = _raw_number(dataset, keyword)
    if fast is not None:
        return fast
    try:
        value = dataset.get(keyword)
        if value is None or value == "":
            return None
        number = int(value)
    except Exception:  # a malformed value: in doubt
        return None
    return number


def expected_native_length(dataset: Dataset) -> int | None:
    """Bytes of native Pixel Data the geometry declares: Rows × Columns × Samples per Pixel
    × ceil(Bits Allocated / 8) × Number of Frames (bits packed for Bits Allocated 1);
    ``None`` when the geometry is missing or unusable (then nothing is refused)."""
    rows = _number(dataset, "Rows")
    columns = _number(dataset, "Columns")
    bits = _number(dataset, "BitsAllocated")
    if rows is None or columns is None or bits is None:
        return None
    samples = _number(dataset, "SamplesPerPixel")
    frames = _number(dataset, "NumberOfFrames")
    samples = 1 if samples is None else samples
    frames = 1 if frames is None else frames
    if min(rows, columns, bits, samples, frames) <= 0:
        return None
    try:
        photometric = str(dataset.get("PhotometricInterpretation") or "").strip()
    except Exception:
        photometric = ""
    if photometric in _SUBSAMPLED_422 and samples == 3:
        samples = 2  # two chrominance samples shared by each pair of pixels
    if bits == 1:
        return (rows * columns * samples * frames + 7) // 8
    return rows * columns * samples * ((bits + 7) // 8) * frames


def native_length_problem(dataset: Dataset, length: int) -> str | None:
    """Why native Pixel Data of ``length`` bytes is refused (shorter than its geometry)."""
    expected = expected_native_length(dataset)
    if expected is None or length >= expected:
        return None  # longer, or padded to even length: accepted
    return f"pixel data is shorter than its geometry ({length} of {expected} bytes)"


def fragments_problem(stream: BinaryIO, start: int, end: int,
                      little_endian: bool = True) -> str | None:
    """Why the encapsulated Pixel Data whose items run from ``start`` to ``end`` (just
    after its sequence delimiter) is refused: an item of odd or undefined length, an
    element other than an item, items running past the delimiter. Reads 8 bytes per item
    (the stream's position is changed)."""
    header = struct.Struct("<HHL" if little_endian else ">HHL")
    position = start
    index = 0
    while True:
        if position + 8 > end:
            return "encapsulated pixel data items run past the sequence delimiter"
        stream.seek(position)
        raw = stream.read(8)
        if len(raw) != 8:
            return "encapsulated pixel data is truncated"
        group, element, length = header.unpack(raw)
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER:
            if position + 8 != end:
                return "encapsulated pixel data items do not end at the delimiter"
            return None
        if tag != ITEM:
            return "encapsulated pixel data holds an element that is not an item"
        if length == UNDEFINED_LENGTH:
            return f"encapsulated pixel data item {index} has an undefined length"
        if length % 2:
            return f"odd-length pixel data fragment (item {index}, {length} bytes)"
        position += 8 + length
        index += 1
