"""Header-only parsing: good datasets of every transfer syntax, broken ones refused."""

from __future__ import annotations

import io
import random
import zlib
from pathlib import Path

import pytest
from pydicom.filereader import data_element_generator
from pydicom.uid import UID
from tests.support.unitkit import bundled_file, generated, split_part10

from dde.dicom.header import BrokenDataset, InstanceHeader, parse_header

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

# (bundled file, transfer syntax it is in, modality) — all hold pixel data.
GOOD_FILES = [
    ("MR_small_implicit.dcm", IMPLICIT, "MR"),
    ("CT_small.dcm", EXPLICIT, "CT"),
    ("MR_small_bigendian.dcm", BIG_ENDIAN, "MR"),
    ("image_dfl.dcm", DEFLATED, "OT"),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", "NM"),
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", "NM"),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "OT"),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "MR"),
]
NOT_DEFLATED = [f for f in GOOD_FILES if f[1] != DEFLATED]


def bundled(name: str) -> tuple[str, bytes]:
    return split_part10(bundled_file(name).read_bytes())


def expected_uids(name: str) -> tuple[str, str, str]:
    from pydicom import dcmread

    ds = dcmread(bundled_file(name), stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


def elements(encoded: bytes, syntax: str) -> list[tuple[int, int, int, int | None]]:
    """(tag, start, end, value length) of each top-level element, as laid out in bytes."""
    uid = UID(syntax)
    stream = io.BytesIO(encoded)
    layout = []
    start = 0
    for element in data_element_generator(stream, uid.is_implicit_VR, uid.is_little_endian,
                                          defer_size=None):
        length = getattr(element, "length", None)
        layout.append((int(element.tag), start, stream.tell(), length))
        start = stream.tell()
    return layout


def pixel_data(encoded: bytes, syntax: str) -> tuple[int, int, int, int | None]:
    return next(e for e in elements(encoded, syntax) if e[0] == 0x7FE00010)


def assert_broken(encoded: bytes, syntax: str) -> None:
    with pytest.raises(BrokenDataset):
        parse_header(encoded, syntax)


@pytest.mark.parametrize(("name", "syntax", "modality"), GOOD_FILES,
                         ids=[f[0] for f in GOOD_FILES])
def test_good_files_give_their_identity(name: str, syntax: str, modality: str) -> None:
    file_syntax, encoded = bundled(name)
    assert file_syntax == syntax

    header = parse_header(encoded, syntax)

    sop_class, sop_instance, study = expected_uids(name)
    assert isinstance(header, InstanceHeader)
    assert header.transfer_syntax_uid == syntax
    assert (header.sop_class_uid, header.sop_instance_uid) == (sop_class, sop_instance)
    assert header.study_instance_uid == study
    assert header.modality == modality
    assert "PixelData" not in header.dataset  # a header only


def test_generated_instance_gives_every_routing_field() -> None:
    instance = generated("1.2.826.0.1.3680043.99.1")

    header = parse_header(instance.dataset, instance.transfer_syntax_uid)

    assert header.sop_instance_uid == instance.sop_instance_uid
    assert header.sop_class_uid == instance.sop_class_uid
    assert header.study_instance_uid == "1.2.826.0.1.3680043.99.1"
    assert header.series_instance_uid
    assert (header.patient_id, header.accession_number, header.modality) == (
        "DDE-TEST-1", "ACC1", "CT")
    assert str(header.dataset.PatientName) == "Test^Patient"


def test_header_repr_shows_no_dataset() -> None:
    instance = generated()

    text = repr(parse_header(instance.dataset, instance.transfer_syntax_uid))

    assert "Test^Patient" not in text


@pytest.mark.parametrize(("name", "syntax", "modality"), NOT_DEFLATED,
                         ids=[f[0] for f in NOT_DEFLATED])
def test_truncated_inside_pixel_data_is_refused(name: str, syntax: str,
                                                modality: str) -> None:
    _, encoded = bundled(name)
    _, start, end, _ = pixel_data(encoded, syntax)

    for cut in (start + (end - start) // 2, end - 1, start + 13):
        assert_broken(encoded[:cut], syntax)


@pytest.mark.parametrize(("name", "syntax", "modality"), NOT_DEFLATED,
                         ids=[f[0] for f in NOT_DEFLATED])
def test_truncated_inside_a_header_element_is_refused(name: str, syntax: str,
                                                      modality: str) -> None:
    _, encoded = bundled(name)
    layout = elements(encoded, syntax)
    sop_instance = next(e for e in layout if e[0] == 0x00080018)
    longest = max((e for e in layout if e[0] < 0x7FE00010), key=lambda e: e[2] - e[1])

    for _, start, end, _ in (sop_instance, longest):
        assert_broken(encoded[:end - 1], syntax)  # last value byte missing
        assert_broken(encoded[:(start + end) // 2 + 1], syntax)


@pytest.mark.parametrize(("name", "syntax", "modality"), NOT_DEFLATED,
                         ids=[f[0] for f in NOT_DEFLATED])
def test_truncated_inside_an_element_header_is_refused(name: str, syntax: str,
                                                       modality: str) -> None:
    _, encoded = bundled(name)
    layout = elements(encoded, syntax)
    starts = [layout[1][1], layout[len(layout) // 2][1], layout[-1][1]]

    for start in starts:
        for inside in (1, 2, 3, 5, 7):  # within the tag, the VR or the length
            assert_broken(encoded[:start + inside], syntax)


def test_a_dataset_ending_before_pixel_data_is_accepted_as_the_pacs_accepts_it() -> None:
    # A cut exactly between two elements leaves a structurally complete dataset without
    # Pixel Data: the PACS (DCMTK) stores such a dataset, so the router does too (a
    # transfer cut short never reaches the router: DIMSE marks the last fragment).
    _, encoded = bundled("CT_small.dcm")
    pixel_start = pixel_data(encoded, EXPLICIT)[1]

    header = parse_header(encoded[:pixel_start], EXPLICIT)

    assert header.modality == "CT"


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_truncated_deflated_dataset_is_refused(cut: float) -> None:
    _, encoded = bundled("image_dfl.dcm")

    assert_broken(encoded[:int(len(encoded) * cut)], DEFLATED)


def test_deflated_stream_that_does_not_inflate_is_refused() -> None:
    _, encoded = bundled("image_dfl.dcm")
    corrupt = bytes([encoded[0] ^ 0xFF]) + b"\xff" * 16 + encoded[17:]

    assert_broken(corrupt, DEFLATED)


def test_generated_deflated_dataset_parses() -> None:
    instance = generated()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(instance.dataset) + compressor.flush()

    header = parse_header(deflated, DEFLATED)

    assert header.sop_instance_uid == instance.sop_instance_uid


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG_ENDIAN, DEFLATED,
                                    "1.2.840.10008.1.2.4.50", "1.2.3.4.5"])
def test_empty_dataset_is_refused(syntax: str) -> None:
    assert_broken(b"", syntax)


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG_ENDIAN, DEFLATED])
@pytest.mark.parametrize("size", [1, 7, 8, 100, 4096])
def test_random_garbage_is_refused(syntax: str, size: int) -> None:
    rng = random.Random(size * 31 + len(syntax))
    for _ in range(10):
        assert_broken(rng.randbytes(size), syntax)


def test_trailing_bytes_after_the_last_element_are_refused() -> None:
    instance = generated()

    assert_broken(instance.dataset + b"\x00\x00\x00", EXPLICIT)


def test_elements_out_of_order_are_refused() -> None:
    instance = generated()
    layout = elements(instance.dataset, EXPLICIT)
    (_, a_start, a_end, _), (_, b_start, b_end, _) = layout[2], layout[3]
    data = instance.dataset
    swapped = data[:a_start] + data[b_start:b_end] + data[a_start:a_end] + data[b_end:]

    with pytest.raises(BrokenDataset, match="out of order"):
        parse_header(swapped, EXPLICIT)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.999", "1.2.3.4.5",
                                    "1.2.840.10008.1.2.8.1"])
def test_unknown_transfer_syntax_is_read_as_explicit_little_endian(syntax: str) -> None:
    _, encoded = bundled("CT_small.dcm")
    sop_class, sop_instance, study = expected_uids("CT_small.dcm")

    header = parse_header(encoded, syntax)

    assert header.transfer_syntax_uid == syntax
    assert (header.sop_class_uid, header.sop_instance_uid) == (sop_class, sop_instance)
    assert header.study_instance_uid == study


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_pydicoms_truncated_files_are_refused(name: str) -> None:
    syntax, encoded = bundled(name)

    with pytest.raises(BrokenDataset, match="truncated"):
        parse_header(encoded, syntax)


def test_a_dataset_of_the_wrong_byte_order_is_refused() -> None:
    _, encoded = bundled("MR_small_bigendian.dcm")

    assert_broken(encoded, EXPLICIT)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "rtdose.dcm",
                                  "SC_ybr_full_422_uncompressed.dcm", "charset:chrH31.dcm",
                                  "charset:chrRuss.dcm", "charset:chrX1.dcm"])
def test_the_fast_text_read_agrees_with_pydicoms_conversion(name: str) -> None:
    from pydicom import dcmread

    from dde.dicom import header as header_module
    from dde.dicom.pixels import expected_native_length

    if name.startswith("charset:"):
        from pydicom.data import get_charset_files
        path = Path(get_charset_files(name.split(":")[1])[0])
    else:
        path = bundled_file(name)
    raw = path.read_bytes()
    syntax, dataset = split_part10(raw)
    parsed = parse_header(dataset, syntax)
    converted = dcmread(path, stop_before_pixels=True)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "PatientID", "AccessionNumber",
                    "Modality"):
        value = converted.get(keyword)
        expected = (str(value).strip() or None) if value not in (None, "") else None
        assert header_module._text(parsed.dataset, keyword) == expected, keyword
    full = dcmread(path)
    assert expected_native_length(parsed.dataset) == expected_native_length(full)
