"""The STOW-RS wire format: the streamed multipart body and the parsed answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dde.endpoints.stow_rs import (
    OUT_OF_RESOURCES,
    StowOutcome,
    StowResponseError,
    multipart_body,
    parse_response,
)


def test_the_body_is_read_chunk_by_chunk_never_whole(tmp_path: Path) -> None:
    files = []
    for index in range(3):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(bytes([index]) * 10_000)
        files.append(path)

    chunks = list(multipart_body(files, "BOUNDARY", chunk=1024))

    assert max(len(c) for c in chunks) <= 1024 + 64  # a chunk, or a delimiter and headers
    body = b"".join(chunks)
    assert body.startswith(b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n")
    assert body.endswith(b"\r\n--BOUNDARY--\r\n")
    parts = body.split(b"\r\n--BOUNDARY")
    assert [p.split(b"\r\n\r\n", 1)[1] for p in parts[:3]] == [f.read_bytes() for f in files]


def test_a_file_gone_before_its_turn_stops_the_body(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(multipart_body([tmp_path / "absent.dcm"], "B"))


def test_reasons_written_as_numbers_or_strings_are_read() -> None:
    answer = {"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": ["1.1"]}, "00081197": {"vr": "US", "Value": [42752]}},
        {"00081155": {"vr": "UI", "Value": ["1.2"]}, "00081197": {"vr": "US", "Value": ["0xC000"]}},
        {"00081155": {"vr": "UI", "Value": ["1.3"]}},
    ]}, "00081199": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": ["1.4"]}, "00081196": {"vr": "US", "Value": [45062]}},
    ]}}

    outcomes = parse_response(json.dumps([answer]).encode())

    assert outcomes["1.1"] == StowOutcome(False, failure_reason=OUT_OF_RESOURCES)
    assert outcomes["1.1"].retryable
    assert outcomes["1.2"].describe() == "STOW-RS failure 0xC000 (Cannot understand)"
    assert outcomes["1.3"].describe() == "STOW-RS failure (no reason given)"
    assert outcomes["1.4"].stored
    assert outcomes["1.4"].describe() == "STOW-RS stored with warning 0xB006"


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'"text"',
                                  b'{"00081199": {"vr": "SQ", "Value": 3}}'])
def test_what_is_no_stow_answer_is_said_so(body: bytes) -> None:
    with pytest.raises(StowResponseError):
        parse_response(body)
