"""Pixel Data checks at receive: refuse what no DCMTK-based PACS can read (odd-length
fragments, native pixel data shorter than its geometry), accept complete datasets the PACS
stores (without Pixel Data, float pixel data, unknown geometry). Judged from element and
item headers, also when the dataset is streamed from a file and its pixel data skipped."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from tests.support.pixelkit import (
    JPEG_BASELINE,
    encapsulated_pixel_data,
    encode,
    image_header,
    native_pixel_data,
)
from tests.support.unitkit import bundled_file, split_part10

from dde.dicom.header import BrokenDataset, InstanceHeader, parse_header, parse_header_file

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"


def both_ways(encoded: bytes, syntax: str, tmp_path: Path) -> list[InstanceHeader]:
    """Parse in memory and streamed from a file (values of 64 KiB and more skipped)."""
    path = tmp_path / "dataset.bin"
    path.write_bytes(b"PREFIX" + encoded)
    with path.open("rb") as stream:
        streamed = parse_header_file(stream, 6, 6 + len(encoded), syntax)
    return [parse_header(encoded, syntax), streamed]


def refused_both_ways(encoded: bytes, syntax: str, tmp_path: Path, match: str) -> None:
    with pytest.raises(BrokenDataset, match=match):
        parse_header(encoded, syntax)
    path = tmp_path / "dataset.bin"
    path.write_bytes(encoded)
    with path.open("rb") as stream, pytest.raises(BrokenDataset, match=match):
        parse_header_file(stream, 0, len(encoded), syntax)


def encapsulated(fragments: list[bytes], offset_table: bytes = b"") -> bytes:
    ds = image_header(bits=8)
    return encode(ds) + encapsulated_pixel_data(fragments, offset_table)


# -- encapsulated: fragments ----------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 61, 99_999])
def test_an_odd_length_fragment_is_refused(length: int, tmp_path: Path) -> None:
    encoded = encapsulated([b"\xff\xd8" * 8, bytes(length)])

    refused_both_ways(encoded, JPEG_BASELINE, tmp_path, "odd-length pixel data fragment")


def test_an_odd_length_fragment_after_large_ones_is_refused_from_a_file(tmp_path: Path) -> None:
    # 3 × 200 KiB fragments: each is skipped by seeking from item header to item header.
    encoded = encapsulated([bytes(200 << 10)] * 3 + [bytes(7)], offset_table=bytes(16))

    refused_both_ways(encoded, JPEG_BASELINE, tmp_path, r"item 4, 7 bytes")


@pytest.mark.parametrize("fragments", [[b""], [bytes(2)], [bytes(62), bytes(100_000)],
                                       [bytes(200 << 10)] * 3])
def test_even_length_fragments_are_accepted(fragments: list[bytes], tmp_path: Path) -> None:
    encoded = encapsulated(fragments, offset_table=struct.pack("<L", 0))

    for header in both_ways(encoded, JPEG_BASELINE, tmp_path):
        assert header.modality == "CT"


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
                                  "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_bundled_encapsulated_files_are_accepted(name: str, tmp_path: Path) -> None:
    syntax, encoded = split_part10(bundled_file(name).read_bytes())

    assert len(both_ways(encoded, syntax, tmp_path)) == 2


def test_an_item_running_past_the_delimiter_is_refused(tmp_path: Path) -> None:
    # The last item claims 4 bytes more than there are before the sequence delimiter.
    ds = image_header(bits=8)
    pixel = bytearray(encapsulated_pixel_data([bytes(10)]))
    fragment_length = len(pixel) - 8 - 4 - 10
    struct.pack_into("<L", pixel, fragment_length, 14)
    encoded = encode(ds) + bytes(pixel) + encode(_trailer())

    with pytest.raises(BrokenDataset):
        parse_header(encoded, JPEG_BASELINE)


def _trailer() -> Dataset:
    trailer = Dataset()
    trailer.add_new(0xFFFCFFFC, "OB", bytes(8))  # data set trailing padding
    return trailer


# -- native: length against geometry --------------------------------------------------------


def native(length: int, **geometry: int | str) -> bytes:
    return encode(image_header(**geometry)) + native_pixel_data(length)  # type: ignore[arg-type]


def test_native_pixel_data_shorter_than_its_geometry_is_refused(tmp_path: Path) -> None:
    # 8 × 8 × 16 bits = 128 bytes declared, 64 present (a file cut short, re-encoded)
    refused_both_ways(native(64), EXPLICIT, tmp_path, r"shorter than its geometry \(64 of 128")


@pytest.mark.parametrize("length", [128, 130, 4096])
def test_native_pixel_data_as_long_or_longer_is_accepted(length: int, tmp_path: Path) -> None:
    assert len(both_ways(native(length), EXPLICIT, tmp_path)) == 2


def test_one_padding_byte_of_an_odd_geometry_is_accepted(tmp_path: Path) -> None:
    # 3 × 3 × 8 bits = 9 bytes, padded to the even 10
    both_ways(native(10, rows=3, columns=3, bits=8), EXPLICIT, tmp_path)
    refused_both_ways(native(8, rows=3, columns=3, bits=8), EXPLICIT, tmp_path, "8 of 9")


def test_multi_frame_pixel_data_needs_every_frame(tmp_path: Path) -> None:
    # 8 × 8 × 16 bits × 5 frames = 640 bytes; 4 frames present
    refused_both_ways(native(512, frames=5), EXPLICIT, tmp_path, "512 of 640")
    both_ways(native(640, frames=5), EXPLICIT, tmp_path)


def test_rgb_pixel_data_counts_three_samples(tmp_path: Path) -> None:
    refused_both_ways(native(64, bits=8, samples=3), EXPLICIT, tmp_path, "64 of 192")
    both_ways(native(192, bits=8, samples=3), EXPLICIT, tmp_path)


def test_one_bit_pixel_data_is_packed(tmp_path: Path) -> None:
    # 10 × 10 × 1 bit × 3 frames = 300 bits = 37.5 bytes: 38, padded to 38
    both_ways(native(38, rows=10, columns=10, bits=1, frames=3), EXPLICIT, tmp_path)
    refused_both_ways(native(36, rows=10, columns=10, bits=1, frames=3), EXPLICIT, tmp_path,
                      "36 of 38")


def test_large_short_pixel_data_is_refused_from_a_file_without_reading_it(
    tmp_path: Path,
) -> None:
    # 512 × 512 × 16 bits = 512 KiB declared, 300 000 bytes present (skipped, never read)
    refused_both_ways(native(300_000, rows=512, columns=512), EXPLICIT, tmp_path,
                      "300000 of 524288")


def recoded(name: str, syntax: str, keep: float) -> bytes:
    """A bundled image with only ``keep`` of its pixel data, encoded anew in ``syntax``."""
    ds = dcmread(bundled_file(name))
    pixels = bytes(ds.PixelData)
    ds.PixelData = pixels[:int(len(pixels) * keep) // 2 * 2]
    buffer = DicomBytesIO()
    buffer.is_little_endian = syntax != BIG_ENDIAN
    buffer.is_implicit_VR = syntax == IMPLICIT
    write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG_ENDIAN])
def test_a_file_cut_short_and_re_encoded_is_refused_in_every_native_syntax(
    syntax: str, tmp_path: Path,
) -> None:
    refused_both_ways(recoded("MR_small.dcm", syntax, 0.5), syntax, tmp_path,
                      "4096 of 8192")
    both_ways(recoded("MR_small.dcm", syntax, 1.0), syntax, tmp_path)


def test_deflated_pixel_data_shorter_than_its_geometry_is_refused() -> None:
    import zlib

    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    encoded = deflater.compress(native(64)) + deflater.flush()

    with pytest.raises(BrokenDataset, match="64 of 128"):
        parse_header(encoded, DEFLATED)


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "SC_rgb_small_odd.dcm",
                                  "SC_ybr_full_422_uncompressed.dcm", "MR_small_padded.dcm",
                                  "rtdose.dcm", "liver_1frame.dcm"])
def test_bundled_native_files_are_accepted(name: str, tmp_path: Path) -> None:
    syntax, encoded = split_part10(bundled_file(name).read_bytes())

    assert len(both_ways(encoded, syntax, tmp_path)) == 2


def charset_file(name: str) -> Path:
    from pydicom.data import get_charset_files

    found = get_charset_files(name)
    assert found, f"pydicom does not bundle {name}"
    return Path(found[0])


# -- in doubt: accepted -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chrJapMulti.dcm", "chrKoreanMulti.dcm"])
def test_a_complete_dataset_without_pixel_data_is_accepted(name: str, tmp_path: Path) -> None:
    # CR headers from pydicom's charset test files: an Image Pixel module, no Pixel Data;
    # Orthanc stores them.
    syntax, encoded = split_part10(charset_file(name).read_bytes())

    for header in both_ways(encoded, syntax, tmp_path):
        assert header.modality == "CR"


def test_a_generated_image_header_without_pixel_data_is_accepted(tmp_path: Path) -> None:
    assert len(both_ways(encode(image_header()), EXPLICIT, tmp_path)) == 2


def test_without_geometry_nothing_is_refused(tmp_path: Path) -> None:
    ds = image_header()
    del ds.Rows
    both_ways(encode(ds) + native_pixel_data(2), EXPLICIT, tmp_path)


def test_unreadable_geometry_is_accepted(tmp_path: Path) -> None:
    syntax, encoded = split_part10(bundled_file("badVR.dcm").read_bytes())  # frames "1A"
    assert len(both_ways(encoded, syntax, tmp_path)) == 2


def test_float_pixel_data_is_not_judged(tmp_path: Path) -> None:
    ds = image_header(bits=32)
    ds.add_new(0x7FE00008, "OF", bytes(4))  # Float Pixel Data, far shorter than 8 × 8 × 4
    both_ways(encode(ds), EXPLICIT, tmp_path)


def test_defined_length_pixel_data_in_an_encapsulated_syntax_is_not_judged(
    tmp_path: Path,
) -> None:
    both_ways(native(2), RLE, tmp_path)


def test_the_check_reads_item_headers_not_pixel_data(tmp_path: Path) -> None:
    # 40 fragments of 256 KiB streamed from a file: the bytes read stay far below their sum.
    encoded = encapsulated([bytes(256 << 10)] * 40)
    path = tmp_path / "big.bin"
    path.write_bytes(encoded)
    with path.open("rb", buffering=0) as raw:
        counting = CountingReader(raw)
        parse_header_file(counting, 0, len(encoded), JPEG_BASELINE)  # type: ignore[arg-type]
    assert counting.read_bytes < 2 << 20, counting.read_bytes


class CountingReader(io.RawIOBase):
    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size) or b""
        self.read_bytes += len(data)
        return data
