"""Lossless transcoding of a Part-10 file to an uncompressed little-endian transfer syntax,
for a destination that does not accept the syntax it was received in.

Only ever *towards* explicit (or implicit) VR little endian: compressed pixel data is
decoded, never encoded, so no step adds a loss (a JPEG baseline image stays as lossy as it
arrived, and says so in Lossy Image Compression). The spool keeps the original bytes; a
transcoded copy is written per delivery attempt and removed after it.

What can be transcoded, and by what (the choice, measured on the public corpus of 47 real
files: pylibjpeg with its openjpeg, libjpeg and rle plugins decodes every compressed file
there but the one deliberately broken JPEG; GDCM's wheel missed JPEG extended 12-bit, RLE
through pydicom and HTJ2K):

- encapsulated JPEG, JPEG-LS, JPEG 2000, HTJ2K and RLE: pydicom's pixel decoders with the
  pylibjpeg plugins;
- Deflated Image Frame Compression (1.2.840.10008.1.2.8.1, newer than pydicom 3.0): each
  frame is inflated with zlib (the standard's raw deflate), 1-bit frames re-packed end to
  end as native pixel data requires;
- deflated explicit VR little endian: pydicom inflates it on reading;
- explicit VR big endian: values are re-encoded little endian, pixel data from pydicom's
  pixel array, other O* values byte-swapped by their word size;
- explicit ⇄ implicit VR little endian: a plain re-encoding.

A dataset whose decoded pixel data would exceed ``max_bytes`` is not transcoded (memory stays
bounded: pydicom decodes in memory); the caller reports that as the reason.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

DEFLATED_IMAGE_FRAME_COMPRESSION = "1.2.840.10008.1.2.8.1"
UNCOMPRESSED_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
"""The syntaxes transcoding produces, in order of preference."""
RE_ENCODED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                        DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})
"""Syntaxes whose data are converted without decoding any pixel data."""
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class TranscodeError(Exception):
    """The file cannot be transcoded; the message says why (shown as the delivery's reason)."""


def can_transcode(source_syntax: str) -> bool:
    """Whether a file in ``source_syntax`` can be made uncompressed little endian here."""
    if source_syntax in RE_ENCODED or source_syntax == DEFLATED_IMAGE_FRAME_COMPRESSION:
        return True
    try:
        return bool(get_decoder(source_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def transcode(source: Path, target: Path, target_syntax: str, max_bytes: int) -> str:
    """Write ``source`` (a Part-10 file) to ``target`` in ``target_syntax`` (one of
    :data:`UNCOMPRESSED_LITTLE_ENDIAN`); the syntax it was in. TranscodeError if it cannot
    be done (no decoder, undecodable pixel data, larger than ``max_bytes`` decoded)."""
    if target_syntax not in UNCOMPRESSED_LITTLE_ENDIAN:
        raise TranscodeError(f"cannot transcode to {target_syntax}: only to uncompressed "
                             "little endian")
    try:
        dataset = dcmread(source)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise TranscodeError(f"cannot read the spool file to transcode it: {exc}") from None
    original = str(dataset.file_meta.TransferSyntaxUID)
    if not can_transcode(original):
        raise TranscodeError(f"no decoder for {_name(original)}")
    _check_size(dataset, max_bytes)
    try:
        _to_native_little_endian(dataset, original)
    except TranscodeError:
        raise
    except Exception as exc:  # decoders raise assorted errors on damaged pixel data
        raise TranscodeError(f"cannot decode the pixel data of {_name(original)}: "
                             f"{str(exc)[:200]}") from None
    dataset.file_meta.TransferSyntaxUID = UID(target_syntax)
    implicit = target_syntax == ImplicitVRLittleEndian
    try:
        # pydicom will not change a file's byte order: a copy made of values has none
        written = _by_value(dataset) if original == ExplicitVRBigEndian else dataset
        written.save_as(target, enforce_file_format=True, implicit_vr=implicit,
                        little_endian=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TranscodeError(f"cannot encode the dataset as {_name(target_syntax)}: "
                             f"{str(exc)[:200]}") from None
    return original


def decoded_size(dataset: Dataset) -> int:
    """Bytes of the dataset's pixel data once decoded (0 without pixel data)."""
    if "PixelData" not in dataset:
        return 0
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    bits = int(dataset.get("BitsAllocated", 8) or 8)
    return math.ceil(rows * columns * samples * frames * bits / 8)


def _check_size(dataset: Dataset, max_bytes: int) -> None:
    size = decoded_size(dataset)
    if size > max_bytes:
        raise TranscodeError(f"too large to transcode: {size / 1e6:.0f} MB of pixel data "
                             f"decoded, more than delivery.transcode_max_bytes "
                             f"({max_bytes / 1e6:.0f} MB)")


def _to_native_little_endian(dataset: Dataset, original: str) -> None:
    """Make ``dataset`` hold native (uncompressed) little-endian values."""
    if original == DEFLATED_IMAGE_FRAME_COMPRESSION:
        dataset.PixelData = _inflated_frames(dataset)
        dataset["PixelData"].VR = "OW" if int(dataset.BitsAllocated) > 8 else "OB"
        dataset["PixelData"].is_undefined_length = False
    elif original == ExplicitVRBigEndian:
        _swap_words(dataset)
        if "PixelData" in dataset:
            pixels = dataset.pixel_array
            dataset.PixelData = np.ascontiguousarray(pixels).astype(
                pixels.dtype.newbyteorder("<"), copy=False).tobytes()
            dataset["PixelData"].VR = "OW" if int(dataset.BitsAllocated) > 8 else "OB"
            if int(dataset.get("SamplesPerPixel", 1) or 1) > 1:
                dataset.PlanarConfiguration = 0  # the pixel array is colour-by-pixel
    elif original not in RE_ENCODED:
        dataset.decompress(generate_instance_uid=False, as_rgb=True)


def _inflated_frames(dataset: Dataset) -> bytes:
    """The frames of Deflated Image Frame Compression pixel data, inflated and laid end to
    end as native pixel data (1-bit frames packed without padding between them)."""
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    bits = int(dataset.BitsAllocated)
    pixels_per_frame = int(dataset.Rows) * int(dataset.Columns) * int(
        dataset.get("SamplesPerPixel", 1) or 1)
    raw = [zlib.decompress(frame, wbits=-15)
           for frame in generate_frames(dataset.PixelData, number_of_frames=frames)]
    if bits != 1:
        return b"".join(raw)
    bits_out = np.concatenate([
        np.unpackbits(np.frombuffer(frame, dtype=np.uint8), bitorder="little")[
            :pixels_per_frame] for frame in raw])
    packed = np.packbits(bits_out, bitorder="little").tobytes()
    return packed + b"\0" * (len(packed) % 2)


def _swap_words(dataset: Dataset) -> None:
    """Byte-swap the values of O* elements other than pixel data (big → little endian);
    pydicom re-encodes the numbers of the other VRs itself."""
    for element in dataset.iterall():
        size = _WORD_SIZE.get(str(element.VR))
        if size is None or element.tag == 0x7FE00010 or not element.value:
            continue
        value = bytes(element.value)
        usable = len(value) - len(value) % size
        swapped = np.frombuffer(value[:usable], dtype=f">u{size}").astype(f"<u{size}")
        element.value = swapped.tobytes() + value[usable:]


def _by_value(dataset: Dataset) -> Dataset:
    """A copy of ``dataset`` built from its elements' values (sequences too), with its
    file meta, carrying no byte order of its own."""
    copy = Dataset()
    for element in dataset:
        if element.VR == "SQ":
            value: object = Sequence([_by_value(item) for item in element.value])
        else:
            value = element.value
        copy.add(DataElement(element.tag, element.VR, value))
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        copy.file_meta = FileMetaDataset(meta)
    copy.preamble = getattr(dataset, "preamble", None)
    return copy


def _name(uid: str) -> str:
    name = UID(uid).name
    return name if name != uid else f"transfer syntax {uid}"
