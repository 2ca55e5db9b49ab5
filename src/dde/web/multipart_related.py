"""A ``multipart/related`` body (RFC 2387, the STOW-RS request of PS3.18) read as it
arrives, part by part, in bounded memory: each part's bytes go to a sink as they come and
are never gathered.

The parsing is python-multipart's :class:`MultipartParser` (already a dependency: FastAPI's
form parser), fed with whatever the stream gives and answering with callbacks. It is not
specific to ``multipart/form-data``: it takes any boundary, keeps a partial delimiter
across chunks (its look-behind), skips the transport padding after a delimiter and the
epilogue after the close delimiter, and keeps at most one header line per part in memory
(bounded by its ``max_header_size``). Two things it leaves to us, both done here: a
preamble before the first delimiter (RFC 2046 allows one; the parser wants the body to
start with it) is skipped with a look-behind of the delimiter's length, and a body that
ends before its close delimiter is an error (its ``finalize`` checks nothing). Chosen over a
hand-written parser: its delimiter search is ``bytes.find`` (C speed on a 1 GB part) and
its edge cases have had years of use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_PART_HEADERS = 16
"""Header lines a part may have (Content-Type, Content-Length, Content-ID, …)."""
MAX_HEADER_LINE = 8 * 1024
MAX_BOUNDARY = 70
"""RFC 2046: a boundary has 1 to 70 characters."""


class MultipartError(Exception):
    """The body is not a well-formed multipart message; the message says where."""


class PartSink(Protocol):
    """Where the parts go: :meth:`begin` with a part's headers (names in lower case), its
    bytes in pieces, :meth:`end` when it is complete."""

    def begin(self, headers: Mapping[str, str]) -> None: ...

    def data(self, chunk: bytes) -> None: ...

    def end(self) -> None: ...


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type of a Content-Type value (lower case) and its parameters (names in
    lower case, quoted values unquoted)."""
    kind, options = parse_options_header(content_type)
    return (kind.decode("latin-1").strip().lower(),
            {k.decode("latin-1").strip().lower(): v.decode("latin-1")
             for k, v in options.items()})


def checked_boundary(value: str | None) -> bytes:
    """The boundary parameter as bytes; :class:`MultipartError` when missing or invalid."""
    if not value:
        raise MultipartError("the Content-Type has no boundary parameter")
    if len(value) > MAX_BOUNDARY or not value.isascii():
        raise MultipartError(f"the boundary must be 1 to {MAX_BOUNDARY} ASCII characters")
    return value.encode("ascii")


class RelatedReader:
    """Feed the body with :meth:`feed` as it arrives, then call :meth:`finish`."""

    def __init__(self, boundary: bytes, sink: PartSink) -> None:
        self._sink = sink
        self._delimiter = b"\r\n--" + boundary
        self._before = b"\r\n"
        """The preamble's last bytes (a delimiter may straddle two chunks); the body's
        start counts as a line start."""
        self._found = False
        """The first delimiter was seen (its line may not be complete yet)."""
        self._started = False
        """The parser has the body from the first delimiter on."""
        self._ended = False
        self._in_part = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }, max_header_count=MAX_PART_HEADERS, max_header_size=MAX_HEADER_LINE)

    @property
    def ended(self) -> bool:
        """The close delimiter was read: every part is complete."""
        return self._ended

    def feed(self, chunk: bytes) -> None:
        if self._ended or not chunk:
            return  # the epilogue
        if not self._started:
            first = self._skip_preamble(chunk)
            if first is None:
                return
            chunk = first
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise MultipartError(f"malformed multipart body: {exc}") from None

    def _skip_preamble(self, chunk: bytes) -> bytes | None:
        """The body from its first delimiter on, without the transport padding of that
        delimiter's line (the parser takes padding only after later ones); None until the
        line is complete."""
        seen = self._before + chunk
        if not self._found:
            found = seen.find(self._delimiter)
            if found < 0:
                self._before = seen[-(len(self._delimiter) - 1):]
                return None
            self._found = True
            seen = seen[found:]
        rest = seen[len(self._delimiter):]
        if rest.startswith(b"--"):  # the close delimiter: a body without parts
            self._started = True
            return seen
        line_end = rest.find(b"\r\n")
        if line_end < 0:
            if len(rest) > MAX_HEADER_LINE:
                raise MultipartError("malformed multipart body: no line end after the "
                                     "first delimiter")
            self._before = seen
            return None
        self._started = True
        if rest[:line_end].strip(b" \t"):
            return seen  # not padding: the parser says what is wrong
        return self._delimiter + rest[line_end:]

    def finish(self) -> None:
        """The body is over: :class:`MultipartError` unless its close delimiter was read."""
        if not self._found:
            raise MultipartError("the body has no boundary delimiter line")
        if not self._ended:
            raise MultipartError("the body ends before its close delimiter "
                                 "(a truncated request)")

    # -- the parser's callbacks ---------------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self._in_part = True
        self._sink.begin(self._headers)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._sink.data(data[start:end])

    def _part_end(self) -> None:
        if self._in_part:
            self._in_part = False
            self._sink.end()

    def _end(self) -> None:
        self._ended = True
