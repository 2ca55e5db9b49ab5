"""Following the parts' logs: complete lines, as they are appended, prefixed by part."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from dde.stack.process import log_size, offset_of_last_lines


class Logged(Protocol):
    """A part with a log file (a stack part)."""

    @property
    def name(self) -> str: ...

    @property
    def log(self) -> Path: ...


@dataclass
class LogFollower:
    """Prints the complete lines appended to some parts' logs, prefixed with the part name."""

    parts: Sequence[Logged]
    out: TextIO | None = None
    start_at_end: bool = False
    prefix: bool = True
    _offsets: dict[str, int] = field(default_factory=dict)
    _partial: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in self.parts:
            self._offsets[part.name] = log_size(part.log) if self.start_at_end else 0
        self._width = max((len(p.name) for p in self.parts), default=0)

    def say(self, name: str, line: str) -> None:
        out = self.out or sys.stdout
        out.write(f"{name:<{self._width}} | {line}\n" if self.prefix else f"{line}\n")
        out.flush()

    def skip_to_last(self, lines: int) -> None:
        """Start each log ``lines`` lines before its end."""
        for part in self.parts:
            self._offsets[part.name] = offset_of_last_lines(part.log, lines)

    def poll(self) -> None:
        for part in self.parts:
            offset = self._offsets[part.name]
            if log_size(part.log) < offset:
                offset = 0  # truncated or replaced: start again
            try:
                with open(part.log, "rb") as log:
                    log.seek(offset)
                    chunk = log.read()
            except OSError:
                continue
            self._offsets[part.name] = offset + len(chunk)
            data = self._partial.pop(part.name, b"") + chunk
            *lines, rest = data.split(b"\n")
            if rest:
                self._partial[part.name] = rest
            for line in lines:
                self.say(part.name, line.decode(errors="replace").rstrip("\r"))
