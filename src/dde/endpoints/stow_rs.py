"""STOW-RS on the wire (DICOM PS3.18 §10.5): the ``multipart/related`` request body, streamed
from the spool, and the per-instance outcome read from the ``application/dicom+json`` answer.

Pure apart from reading the spooled files: the sender (:mod:`dde.endpoints.dicomweb_sender`)
owns the connection and maps these outcomes to :class:`~dde.endpoints.sending.SendResult`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_BYTES = 256 * 1024
"""The body is read from the spool and written to the socket this much at a time: a
request of a hundred instances holds one chunk in memory, not the instances."""

# Attribute tags of the STOW-RS response (PS3.18 table 10.5.3-1), as DICOM JSON keys.
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"

# Failure Reason values (PS3.18 §I.2.2, PS3.4 C-STORE status codes) worth a name.
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_CLASS = 0x0112
SOP_CLASS_NOT_SUPPORTED = 0x0122
REFUSED_NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC123

FAILURE_REASON_NAMES = {
    PROCESSING_FAILURE: "Processing failure",
    DUPLICATE_SOP_INSTANCE: "Duplicate SOP instance",
    NO_SUCH_SOP_CLASS: "No such SOP class",
    SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
    REFUSED_NOT_AUTHORIZED: "Not authorized",
    OUT_OF_RESOURCES: "Out of resources",
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "Data set does not match SOP class",
    CANNOT_UNDERSTAND: "Cannot understand",
    STUDY_UID_MISMATCH: "Referenced Study Instance UID mismatch",
    TRANSFER_SYNTAX_NOT_SUPPORTED: "Transfer syntax not supported",
}

RETRYABLE_FAILURES = frozenset({PROCESSING_FAILURE, OUT_OF_RESOURCES})
"""Failure reasons that say "not now" rather than "never" (PS3.18: the origin server may
store the instance when asked again); the others refuse these bytes for good."""


def new_boundary() -> str:
    """A boundary no Part-10 file will contain by chance (128 random bits)."""
    return f"dde-stow-{secrets.token_hex(16)}"


def content_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def multipart_body(paths: Sequence[Path], boundary: str,
                   chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The request body: one ``application/dicom`` part per file, read chunk by chunk.

    A file missing when its turn comes raises :class:`FileNotFoundError` from inside the
    upload; the sender checks the files first, so this means the spool lost it meanwhile.
    """
    delimiter = f"--{boundary}\r\n".encode()
    part_headers = b"Content-Type: application/dicom\r\n\r\n"
    for index, path in enumerate(paths):
        yield (b"\r\n" if index else b"") + delimiter + part_headers
        with path.open("rb") as source:
            while data := source.read(chunk):
                yield data
    yield f"\r\n--{boundary}--\r\n".encode()


@dataclass(frozen=True)
class StowOutcome:
    """What the origin server said about one SOP instance of the request."""

    stored: bool
    failure_reason: int | None = None
    warning_reason: int | None = None

    @property
    def retryable(self) -> bool:
        return self.failure_reason in RETRYABLE_FAILURES

    def describe(self) -> str:
        """``STOW-RS failure 0xA700 (Out of resources)``; for stored ones, any warning."""
        if self.stored:
            return ("STOW-RS stored" if self.warning_reason is None
                    else f"STOW-RS stored with warning 0x{self.warning_reason:04X}")
        if self.failure_reason is None:
            return "STOW-RS failure (no reason given)"
        name = FAILURE_REASON_NAMES.get(self.failure_reason)
        return (f"STOW-RS failure 0x{self.failure_reason:04X}"
                + (f" ({name})" if name else ""))


class StowResponseError(ValueError):
    """The answer is not a STOW-RS response body (not JSON, or not its shape)."""


def _items(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = document.get(tag)
    if element is None:
        return []
    if not isinstance(element, dict):
        raise StowResponseError(f"attribute {tag} is not a DICOM JSON element")
    value = element.get("Value", [])
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        raise StowResponseError(f"sequence {tag} has no list of items")
    return value


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    value = element.get("Value")
    return value[0] if isinstance(value, list) and value else None


def _reason(item: dict[str, Any], tag: str) -> int | None:
    value = _first(item, tag)
    if isinstance(value, int):
        return value
    if isinstance(value, str):  # some servers write the US value as a hex or decimal string
        try:
            return int(value, 16) if value.lower().startswith("0x") else int(value)
        except ValueError:
            return None
    return None


def parse_response(body: bytes) -> dict[str, StowOutcome]:
    """{SOP Instance UID: outcome} from a STOW-RS ``application/dicom+json`` answer.

    An instance in neither sequence is absent from the result: the caller decides (it was
    not acknowledged, so it is not delivered). :class:`StowResponseError` when the body is
    not such an answer.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StowResponseError(f"not JSON ({type(exc).__name__})") from None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]  # a dataset written as a one-element array
    if not isinstance(document, dict):
        raise StowResponseError("not a DICOM JSON dataset")
    outcomes: dict[str, StowOutcome] = {}
    for item in _items(document, REFERENCED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            outcomes[uid] = StowOutcome(True, warning_reason=_reason(item, WARNING_REASON))
    for item in _items(document, FAILED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):  # a failure wins over a reference of the same instance
            outcomes[uid] = StowOutcome(False, failure_reason=_reason(item, FAILURE_REASON))
    return outcomes
