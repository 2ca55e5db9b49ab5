"""Conditions of routing rules, and how they match a header. Pure: no I/O, no clock.

A condition names a field — a DICOM attribute by keyword (``Modality``) or tag
(``(0008,0060)``), or one of the association's ``CallingAET``, ``CalledAET``, ``SourceIP``,
``ReceivingPort`` (the router's port the association came to) and ``Receiver`` (the name of
the receiver that took it: ``main``, or a ``receivers:`` entry's) — and a test. A
multi-valued attribute matches when any of its values does; a missing
attribute matches only ``exists: false`` (and ``not`` of something it fails).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as PydicomSequence

CONTEXT_FIELDS = ("CallingAET", "CalledAET", "SourceIP", "ReceivingPort", "Receiver")


@dataclass(frozen=True)
class Field:
    name: str
    """As written in the rule: a keyword, ``(gggg,eeee)`` or a context field."""
    tag: int | None
    """The DICOM tag, or None for a context field."""


@dataclass(frozen=True)
class Subject:
    """What a rule may look at: the header and the association it came on."""

    header: Dataset
    calling_aet: str = ""
    called_aet: str = ""
    source_ip: str = ""
    receiving_port: int = 0
    """0: not received on a DICOM port (a web upload, a tool)."""
    receiver: str = ""


@dataclass(frozen=True)
class Equals:
    field: Field
    pattern: str
    """Exact text, or a ``*``/``?`` wildcard pattern (case-sensitive)."""


@dataclass(frozen=True)
class OneOf:
    field: Field
    values: tuple[str, ...]


@dataclass(frozen=True)
class Matches:
    field: Field
    regex: re.Pattern[str]


@dataclass(frozen=True)
class InRange:
    field: Field
    low: str | float | None
    high: str | float | None


@dataclass(frozen=True)
class Exists:
    field: Field
    present: bool


@dataclass(frozen=True)
class Not:
    condition: Condition


@dataclass(frozen=True)
class AllOf:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    conditions: tuple[Condition, ...]


Condition = Equals | OneOf | Matches | InRange | Exists | Not | AllOf | AnyOf

ALWAYS = AllOf(())


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace").strip()
    return str(value).strip()


def values_of(subject: Subject, field: Field) -> list[str] | None:
    """The field's values as text, or None when it is absent or empty."""
    if field.tag is None:
        value = {"CallingAET": subject.calling_aet, "CalledAET": subject.called_aet,
                 "SourceIP": subject.source_ip, "Receiver": subject.receiver,
                 "ReceivingPort": str(subject.receiving_port or "")}[field.name]
        return [value] if value else None
    try:
        element = subject.header.get(field.tag)
    except Exception:  # a value pydicom cannot convert counts as absent
        return None
    if element is None:
        return None
    try:
        value = element.value
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, PydicomSequence):
        return ["(sequence)"] * len(value) or None
    if isinstance(value, MultiValue | list | tuple):
        texts = [_text(v) for v in value]
    else:
        texts = [_text(value)]
    texts = [t for t in texts if t != ""]
    return texts or None


def wildcard(pattern: str) -> re.Pattern[str] | None:
    """DICOM-style wildcards: ``*`` any run of characters, ``?`` one character."""
    if "*" not in pattern and "?" not in pattern:
        return None
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL)


def _number(text: str | float | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _in_range(value: str, low: str | float | None, high: str | float | None) -> bool:
    number = _number(value)
    low_n, high_n = _number(low), _number(high)
    numeric = number is not None and (low is None or low_n is not None) and (
        high is None or high_n is not None)
    if numeric:
        assert number is not None
        return (low_n is None or number >= low_n) and (high_n is None or number <= high_n)
    return (low is None or value >= str(low)) and (high is None or value <= str(high))


def matches(condition: Condition, subject: Subject) -> bool:
    match condition:
        case AllOf(conditions):
            return all(matches(c, subject) for c in conditions)
        case AnyOf(conditions):
            return any(matches(c, subject) for c in conditions)
        case Not(inner):
            return not matches(inner, subject)
        case Exists(field, present):
            return (values_of(subject, field) is not None) == present
    values = values_of(subject, condition.field)
    if values is None:
        return False
    match condition:
        case Equals(_, pattern):
            compiled = wildcard(pattern)
            if compiled is None:
                return pattern in values
            return any(compiled.fullmatch(v) for v in values)
        case OneOf(_, options):
            return any(v in options for v in values)
        case Matches(_, regex):
            return any(regex.search(v) for v in values)
        case InRange(_, low, high):
            return any(_in_range(v, low, high) for v in values)
    raise TypeError(f"unknown condition {condition!r}")
