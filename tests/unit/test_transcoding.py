"""Lossless transcoding to uncompressed little endian (pydicom's bundled files, and
Deflated Image Frame Compression files made here): the pixels decode to the same values,
every other element stays, the SOP Instance UID never changes."""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SegmentationStorage,
    generate_uid,
)

from dde.dicom.transcoding import (
    DEFLATED_IMAGE_FRAME_COMPRESSION,
    TranscodeError,
    can_transcode,
    decoded_size,
    transcode,
)

BUNDLED = [
    "MR_small_jp2klossless.dcm",       # JPEG 2000 lossless
    "JPEG2000.dcm",                    # JPEG 2000
    "JPGExtended.dcm",                 # JPEG extended 12-bit
    "SC_rgb_dcmtk_+eb+cr.dcm",         # JPEG baseline, YBR
    "SC_rgb_jpeg_gdcm.dcm",            # JPEG lossless SV1, RGB
    "MR_small_jpeg_ls_lossless.dcm",   # JPEG-LS lossless
    "JPEGLSNearLossless_16.dcm",       # JPEG-LS near-lossless
    "MR_small_RLE.dcm",                # RLE
    "SC_rgb_rle_16bit_2frame.dcm",     # RLE, colour, 2 frames
    "image_dfl.dcm",                   # deflated explicit VR little endian
    "MR_small_bigendian.dcm",          # explicit VR big endian
    "ExplVR_BigEnd.dcm",               # big endian, RGB, planar configuration 1
    "MR_small_implicit.dcm",           # implicit → explicit
]
CHANGED_BY_DECODING = {"PhotometricInterpretation", "PlanarConfiguration", "PixelData",
                       "NumberOfFrames"}
LIMIT = 64 * 1024 * 1024


def pixels(path: Path | str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path).pixel_array


@pytest.mark.parametrize("name", BUNDLED)
def test_a_bundled_file_transcodes_to_the_same_pixels_and_elements(
        name: str, tmp_path: Path) -> None:
    source = Path(get_testdata_file(name))
    target = tmp_path / "out.dcm"
    original_syntax = transcode(source, target, ExplicitVRLittleEndian, LIMIT)

    before, after = dcmread(source), dcmread(target)
    assert original_syntax == str(before.file_meta.TransferSyntaxUID)
    assert after.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not after["PixelData"].is_undefined_length
    assert np.array_equal(pixels(source), pixels(target))
    assert after.SOPInstanceUID == before.SOPInstanceUID
    assert after.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
    for element in before:
        if element.keyword in CHANGED_BY_DECODING or element.tag.element == 0:
            continue  # decoding changes these; group lengths are not written again
        assert element.tag in after, element.keyword
        assert after[element.tag].value == element.value, element.keyword


def test_to_implicit_vr(tmp_path: Path) -> None:
    source = Path(get_testdata_file("MR_small_RLE.dcm"))
    transcode(source, tmp_path / "out.dcm", ImplicitVRLittleEndian, LIMIT)
    assert dcmread(tmp_path / "out.dcm").file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.array_equal(pixels(source), pixels(tmp_path / "out.dcm"))


def deflated_frames_file(path: Path, bits: int, frames: int, rows: int = 5,
                         columns: int = 7) -> np.ndarray:
    """A Deflated Image Frame Compression file (each frame raw-deflated, encapsulated); the
    pixels it holds, frame by frame."""
    rng = np.random.default_rng(7)
    if bits == 1:
        values = rng.integers(0, 2, size=(frames, rows, columns), dtype=np.uint8)
        encoded = [np.packbits(frame.ravel(), bitorder="little").tobytes() for frame in values]
    else:
        values = rng.integers(0, 255, size=(frames, rows, columns), dtype=np.uint8)
        encoded = [frame.tobytes() for frame in values]
    compressor = [zlib.compressobj(wbits=-15) for _ in encoded]
    deflated = [c.compress(e) + c.flush() for c, e in zip(compressor, encoded, strict=True)]
    ds = Dataset()
    ds.SOPClassUID = SegmentationStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = encapsulate(deflated)
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DEFLATED_IMAGE_FRAME_COMPRESSION
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return values


@pytest.mark.parametrize("bits", [1, 8])
def test_deflated_image_frames_are_inflated_and_laid_end_to_end(bits: int,
                                                                tmp_path: Path) -> None:
    values = deflated_frames_file(tmp_path / "in.dcm", bits, frames=3)
    transcode(tmp_path / "in.dcm", tmp_path / "out.dcm", ExplicitVRLittleEndian, LIMIT)
    # 35 pixels a frame: 1-bit frames are not byte-aligned in native pixel data
    assert np.array_equal(pixels(tmp_path / "out.dcm"), values)


def test_a_file_larger_than_the_limit_is_not_transcoded(tmp_path: Path) -> None:
    source = Path(get_testdata_file("MR_small_RLE.dcm"))
    assert decoded_size(dcmread(source)) == 64 * 64 * 2
    with pytest.raises(TranscodeError, match="too large to transcode"):
        transcode(source, tmp_path / "out.dcm", ExplicitVRLittleEndian, 1000)
    assert not (tmp_path / "out.dcm").exists()


def test_damaged_pixel_data_is_a_transcode_error(tmp_path: Path) -> None:
    with pytest.raises(TranscodeError, match="cannot decode the pixel data"):
        transcode(Path(get_testdata_file("JPEG-lossy.dcm")), tmp_path / "out.dcm",
                  ExplicitVRLittleEndian, LIMIT)


def test_only_towards_uncompressed_little_endian(tmp_path: Path) -> None:
    with pytest.raises(TranscodeError, match="only to uncompressed"):
        transcode(Path(get_testdata_file("CT_small.dcm")), tmp_path / "out.dcm",
                  "1.2.840.10008.1.2.4.90", LIMIT)


def test_what_can_be_transcoded() -> None:
    assert can_transcode("1.2.840.10008.1.2.4.201")  # HTJ2K lossless: pylibjpeg-openjpeg
    assert can_transcode("1.2.840.10008.1.2.5")  # RLE
    assert can_transcode(DEFLATED_IMAGE_FRAME_COMPRESSION)
    assert not can_transcode("1.2.840.10008.1.2.4.100")  # MPEG-2: no decoder
    assert not can_transcode("1.2.3.4")  # a private syntax
