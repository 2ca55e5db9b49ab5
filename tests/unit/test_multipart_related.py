"""The streamed multipart/related reader: the same parts whatever the chunks the body
arrives in (down to single bytes), with a preamble, an epilogue, transport padding and
part bytes that look like the start of a delimiter; a broken body is an error."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dde.web.multipart_related import (
    MultipartError,
    RelatedReader,
    checked_boundary,
    media_type,
)

BOUNDARY = b"dde-boundary-0123"


class Recorder:
    """A PartSink keeping every part (headers, bytes) and checking the call order."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytes]] = []
        self._open: bytearray | None = None
        self._headers: dict[str, str] = {}

    def begin(self, headers: Mapping[str, str]) -> None:
        assert self._open is None, "begin inside a part"
        self._headers = dict(headers)
        self._open = bytearray()

    def data(self, chunk: bytes) -> None:
        assert self._open is not None, "data outside a part"
        self._open += chunk

    def end(self) -> None:
        assert self._open is not None, "end outside a part"
        self.parts.append((self._headers, bytes(self._open)))
        self._open = None


def body_of(parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"",
            padding: bytes = b"") -> bytes:
    delimiter = b"--" + BOUNDARY
    out = preamble + (b"\r\n" if preamble else b"")
    for index, part in enumerate(parts):
        out += (b"\r\n" if index else b"") + delimiter + padding + b"\r\n"
        out += b"Content-Type: application/dicom\r\n\r\n" + part
    return out + b"\r\n" + delimiter + b"--" + epilogue


def read(body: bytes, cuts: list[int]) -> list[tuple[dict[str, str], bytes]]:
    recorder = Recorder()
    reader = RelatedReader(BOUNDARY, recorder)
    start = 0
    for cut in sorted(set(cuts)):
        reader.feed(body[start:cut])
        start = cut
    reader.feed(body[start:])
    reader.finish()
    return recorder.parts


TRICKY = [b"", b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"\r\n--dde", b"\r\n--" + BOUNDARY[:-1],
          b"--" + BOUNDARY, b"x\r\n--" + BOUNDARY + b"x", bytes(range(256))]
"""Part bytes that begin a delimiter without finishing it, or hold the boundary without
the CRLF before it: all of them data."""


def expected(parts: list[bytes]) -> list[tuple[dict[str, str], bytes]]:
    return [({"content-type": "application/dicom"}, p) for p in parts]


def test_one_chunk_and_single_bytes_give_the_same_parts() -> None:
    parts = [b"DICM" * 100, *TRICKY]
    body = body_of(parts, preamble=b"This is the preamble.\r\n--not-it",
                   epilogue=b"\r\nthe epilogue, ignored\r\n--" + BOUNDARY + b"\r\n")
    assert read(body, []) == expected(parts)
    assert read(body, list(range(1, len(body)))) == expected(parts)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(st.sampled_from(TRICKY), st.binary(max_size=300)),
                      min_size=1, max_size=4),
       preamble=st.sampled_from([b"", b"preamble", b"\r\n\r\n", b"--" + BOUNDARY[:-2]]),
       epilogue=st.sampled_from([b"", b"\r\n", b"\r\nepilogue"]),
       padding=st.sampled_from([b"", b" ", b" \t "]),
       data=st.data())
def test_any_split_of_the_body_gives_the_same_parts(
        parts: list[bytes], preamble: bytes, epilogue: bytes, padding: bytes,
        data: st.DataObject) -> None:
    body = body_of(parts, preamble, epilogue, padding)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=30))
    assert read(body, cuts) == expected(parts)


def test_a_body_starting_with_its_delimiter_and_a_quoted_boundary() -> None:
    kind, parameters = media_type(
        'Multipart/Related; type="application/dicom"; boundary="a:b;c=d"')
    assert kind == "multipart/related"
    assert parameters == {"type": "application/dicom", "boundary": "a:b;c=d"}
    boundary = checked_boundary(parameters["boundary"])
    recorder = Recorder()
    reader = RelatedReader(boundary, recorder)
    reader.feed(b"--a:b;c=d\r\n\r\npayload\r\n--a:b;c=d--")
    reader.finish()
    assert recorder.parts == [({}, b"payload")]


@pytest.mark.parametrize("body, problem", [
    (b"", "no boundary delimiter"),
    (b"no delimiter anywhere", "no boundary delimiter"),
    (b"--" + BOUNDARY + b"\r\n\r\npart without its end", "close delimiter"),
    (b"--" + BOUNDARY + b"\r\nbad header line\r\n\r\nx\r\n--" + BOUNDARY + b"--",
     "malformed"),
    (b"--" + BOUNDARY + b"x\r\n", "malformed"),
])
def test_a_broken_body_is_an_error(body: bytes, problem: str) -> None:
    reader = RelatedReader(BOUNDARY, Recorder())
    with pytest.raises(MultipartError, match=problem):
        reader.feed(body)
        reader.finish()


@pytest.mark.parametrize("value", [None, "", "x" * 71, "bö"])
def test_a_missing_or_invalid_boundary_is_refused(value: str | None) -> None:
    with pytest.raises(MultipartError):
        checked_boundary(value)
