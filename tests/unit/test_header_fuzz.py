"""Fuzzing the header parser: random bytes and mutated valid datasets, in every transfer
syntax the parser reads differently, never raise anything but BrokenDataset and never hang.

Fixed seed (``derandomize``), bounded example counts and a per-example deadline, so the run
is the same on every machine and takes a few seconds.
"""

from __future__ import annotations

import zlib
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.unitkit import generated

from dde.dicom.header import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, BrokenDataset, parse_header

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
UNKNOWN_SYNTAX = "1.2.826.0.1.3680043.99.1"
# pydicom warns about the invalid UIDs the mutations make; the parser's answer is the point
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

SYNTAXES = [IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG, JPEG_BASELINE, UNKNOWN_SYNTAX,
            DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN]

FUZZ = settings(derandomize=True, max_examples=400, deadline=1000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _parse_or_broken(encoded: bytes, syntax: str) -> None:
    try:
        header = parse_header(encoded, syntax)
    except BrokenDataset:
        return
    assert isinstance(header.sop_instance_uid, str)  # parsed: a usable header


@cache
def _valid_explicit_little() -> bytes:
    sample = generated(rows=4, columns=4)
    assert sample.transfer_syntax_uid == EXPLICIT_LITTLE
    return sample.dataset


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_valid_explicit_little())
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate",
                                     "length"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 32))]
        elif kind == "truncate":
            del data[at:]
        else:  # a length field: four bytes of extremes at a random place
            value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]))
            data[at:at + 4] = value.to_bytes(4, "little")
    return bytes(data)


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(SYNTAXES))
def test_random_bytes_are_parsed_or_broken(encoded: bytes, syntax: str) -> None:
    _parse_or_broken(encoded, syntax)


@pytest.mark.slow
@FUZZ
@given(_mutated(), st.sampled_from([IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG]))
def test_mutated_valid_datasets_are_parsed_or_broken(encoded: bytes, syntax: str) -> None:
    _parse_or_broken(encoded, syntax)


@pytest.mark.slow
@FUZZ
@given(_mutated())
def test_mutated_deflated_datasets_are_parsed_or_broken(encoded: bytes) -> None:
    _parse_or_broken(_deflate(encoded), DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


@FUZZ
@given(st.binary(min_size=1, max_size=512))
def test_random_deflate_streams_are_parsed_or_broken(encoded: bytes) -> None:
    _parse_or_broken(encoded, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def test_the_seed_dataset_parses() -> None:
    assert parse_header(_valid_explicit_little(), EXPLICIT_LITTLE).sop_instance_uid
