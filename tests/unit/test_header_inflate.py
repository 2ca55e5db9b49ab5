"""Deflated datasets are inflated with a bound: a deflate bomb is refused after inflating at
most the limit (never allocated whole); real deflated files still parse."""

from __future__ import annotations

import time
import tracemalloc
import zlib
from functools import cache
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import read_file_meta_info

from dde.dicom.header import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    MAX_INFLATE_LIMIT,
    MIN_INFLATE_LIMIT,
    BrokenDataset,
    inflate_limit,
    parse_header,
)

GIB = 1 << 30
MIB = 1 << 20


@cache
def _bomb(mebibytes: int) -> bytes:
    """A raw deflate stream of ``mebibytes`` MiB of zeros, about 1 KiB per MiB (~1000:1),
    built without holding the inflated data: the same fully flushed block repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * mebibytes + compressor.flush()


def _deflated_file_body() -> tuple[bytes, str]:
    path = get_testdata_file("image_dfl.dcm", download=False)
    assert path is not None, "pydicom's bundled image_dfl.dcm is missing"
    meta = read_file_meta_info(path)
    raw = Path(path).read_bytes()
    # preamble + "DICM" + the group length element (12 bytes) + the rest of the meta group
    body = raw[132 + 12 + int(meta.FileMetaInformationGroupLength):]
    return body, str(meta.TransferSyntaxUID)


def test_the_default_limit_scales_with_the_compressed_size_within_bounds() -> None:
    assert inflate_limit(0) == MIN_INFLATE_LIMIT
    assert inflate_limit(10 * MIB) == 640 * MIB
    assert inflate_limit(1 << 40) == MAX_INFLATE_LIMIT == 2 * GIB


def test_a_deflate_bomb_is_refused_without_inflating_it_whole() -> None:
    bomb = _bomb(1024)  # 1 GiB of zeros in about 1 MiB
    assert len(bomb) < 2 * MIB
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(BrokenDataset, match="inflates to more than"):
            parse_header(bomb, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.monotonic() - started
    limit = inflate_limit(len(bomb))
    assert limit < 128 * MIB  # 64 × the ~1 MiB compressed
    # at most the limit plus a chunk and one copy, far below the 1 GiB it would inflate to
    assert peak < 2 * limit + 4 * MIB, f"peak {peak / MIB:.0f} MiB"
    assert seconds < 5, f"{seconds:.1f} s"


def test_an_explicit_limit_is_honoured_with_memory_to_match() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(BrokenDataset, match="more than the 1048576 bytes"):
            parse_header(_bomb(64), DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, max_inflated=MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"peak {peak / MIB:.1f} MiB"


def test_a_stream_at_exactly_the_limit_is_inflated() -> None:
    # zeros are not a dataset: getting past inflation to the parser is the point
    with pytest.raises(BrokenDataset) as refused:
        parse_header(_bomb(2), DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, max_inflated=2 * MIB)
    assert "inflates to more than" not in str(refused.value)


def test_a_truncated_deflate_stream_is_still_refused() -> None:
    with pytest.raises(BrokenDataset, match="truncated"):
        parse_header(_bomb(4)[:-200], DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def test_a_real_deflated_file_still_parses() -> None:
    body, syntax = _deflated_file_body()
    assert syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    header = parse_header(body, syntax)
    assert header.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.0.0.0.977067309.6001.0"
    assert header.modality == "OT"


def test_a_real_deflated_file_over_an_explicit_limit_is_refused() -> None:
    body, syntax = _deflated_file_body()
    with pytest.raises(BrokenDataset, match="inflates to more than"):
        parse_header(body, syntax, max_inflated=len(body))
