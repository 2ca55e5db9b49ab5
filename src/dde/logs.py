"""Logging set-up for the ``dde`` processes: INFO by default, DEBUG with ``-v``.

Repeated log lines from the DICOM libraries are kept to one (:class:`RepeatFilter`,
installed by :func:`configure`):

* pynetdicom (no longer on the router's own paths: its PDU classes only) logs two ERROR
  lines each time an association it runs fails. The health monitor logs an endpoint's state
  change itself (down, still down, up again); here the first of identical pynetdicom lines
  passes, the repeats are dropped for :data:`PYNETDICOM_WINDOW` seconds, and the first line
  after that says how many were dropped (a reminder every few minutes at most).
* pydicom logs "Invalid value for VR UI: ..." each time a malformed value is converted — one
  instance produced 161 identical lines. Keyed per thread (an association's instances are
  parsed on its thread, one after the other) with a short window: one line per distinct
  message per instance, and a count of the dropped ones with the next line.

Lines of other loggers pass untouched. The table of recent messages is bounded.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

PYNETDICOM_WINDOW = 300.0
PYDICOM_WINDOW = 10.0
MAX_KEYS = 512


@dataclass
class _Seen:
    first: float
    dropped: int = 0


@dataclass(frozen=True)
class Rule:
    prefix: str
    """Logger name (``pydicom`` covers ``pydicom.*``)."""
    window: float
    per_thread: bool = False


DEFAULT_RULES = (Rule("pynetdicom", PYNETDICOM_WINDOW),
                 Rule("pydicom", PYDICOM_WINDOW, per_thread=True))


class RepeatFilter(logging.Filter):
    """A handler filter: drops a line identical (logger, level, text) to one let through
    less than its rule's window ago; the next one let through carries the count."""

    def __init__(self, rules: tuple[Rule, ...] = DEFAULT_RULES,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        super().__init__()
        self._rules = rules
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[object, ...], _Seen] = OrderedDict()

    def _rule(self, name: str) -> Rule | None:
        for rule in self._rules:
            if name == rule.prefix or name.startswith(rule.prefix + "."):
                return rule
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        rule = self._rule(record.name)
        if rule is None:
            return True
        text = record.getMessage()
        key: tuple[object, ...] = (record.name, record.levelno, text)
        if rule.per_thread:
            key += (record.thread,)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.first < rule.window:
                seen.dropped += 1
                return False
            self._seen[key] = _Seen(now)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
        if seen is not None and seen.dropped:
            record.msg = (f"{text} (and {seen.dropped} identical line(s) in the "
                          f"{now - seen.first:.0f} s before)")
            record.args = None
        return True


def install(handlers: list[logging.Handler], repeat_filter: RepeatFilter | None = None,
            ) -> RepeatFilter:
    """Add one :class:`RepeatFilter` to every handler (once)."""
    repeat_filter = repeat_filter or RepeatFilter()
    for handler in handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(repeat_filter)
    return repeat_filter


def configure(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom's INFO lines describe every association and DIMSE message in detail.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.INFO if verbose else logging.WARNING)
    install(logging.getLogger().handlers)
