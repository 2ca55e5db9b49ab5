"""Datasets with chosen Pixel Data for the receive checks: encapsulated fragments of any
length (also odd, which pydicom would pad), native pixel data of any length, none at all."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from tests.support.datagen import make_instance

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
SEQUENCE_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def image_header(rows: int = 8, columns: int = 8, *, bits: int = 16, samples: int = 1,
                 frames: int | None = None, photometric: str | None = None) -> Dataset:
    """A generated image's header (no Pixel Data) with the given geometry."""
    ds = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                       rows=rows, columns=columns)
    del ds.PixelData
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.SamplesPerPixel = samples
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    if frames is not None:
        ds.NumberOfFrames = frames
    return ds


def encode(ds: Dataset) -> bytes:
    """``ds`` (without file meta) in explicit VR little endian."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def encapsulated_pixel_data(fragments: Sequence[bytes], offset_table: bytes = b"") -> bytes:
    """Pixel Data (7FE0,0010) OB of undefined length: the offset table item, one item per
    fragment exactly as given (odd lengths kept), the sequence delimiter."""
    items = b"".join(ITEM + struct.pack("<L", len(part)) + part
                     for part in (offset_table, *fragments))
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + items \
        + SEQUENCE_DELIMITER


def native_pixel_data(length: int) -> bytes:
    """Pixel Data (7FE0,0010) OW of ``length`` bytes (zeros), explicit VR little endian."""
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, length) + bytes(length)


def part10(ds: Dataset, dataset: bytes, transfer_syntax: str, path: Path) -> Path:
    """Write ``dataset`` (the encoded dataset of ``ds``, perhaps with pixel data appended)
    behind a file meta in ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = UID(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + dataset)
    return path


def odd_fragment_file(path: Path) -> Path:
    """A JPEG baseline image whose one fragment has an odd length (PS3.5 forbids it)."""
    ds = image_header(bits=8)
    return part10(ds, encode(ds) + encapsulated_pixel_data([b"\xff\xd8" + bytes(59)]),
                  JPEG_BASELINE, path)


def short_pixel_data_file(path: Path) -> Path:
    """A native 16-bit 8×8 image with half of its 128 bytes of pixel data."""
    ds = image_header()
    return part10(ds, encode(ds) + native_pixel_data(64), str(ExplicitVRLittleEndian), path)
