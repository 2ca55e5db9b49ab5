"""Named DIMSE status codes (PS3.7 Annex C, PS3.4 Annex B) used by the router.

Never write a status as bare hex elsewhere: import it from here.
"""

from __future__ import annotations

from typing import Final

SUCCESS: Final = 0x0000

# C-STORE warnings (PS3.4 B.2.3): the instance was stored.
WARNING_COERCION_OF_DATA_ELEMENTS: Final = 0xB000
WARNING_ELEMENTS_DISCARDED: Final = 0xB006
WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xB007
WARNING_ATTRIBUTE_LIST_ERROR: Final = 0x0107

# Failures we answer as an SCP.
OUT_OF_RESOURCES: Final = 0xA700
"""Refused: out of resources (spool or database could not take the instance)."""
DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
STUDY_INSTANCE_UID_MISMATCH: Final = DATASET_DOES_NOT_MATCH_SOP_CLASS
"""STOW-RS Failure Reason (0008,1197) of an instance sent to ``/studies/{uid}`` of another
study: PS3.18 names no code of its own for it (Table I.2-2 lets implementations add codes);
the A9xx range (the instance does not conform to what the request's target resource
requires) is what implementations use, so 0xA900."""
CANNOT_UNDERSTAND: Final = 0xC000
"""Refused: the dataset could not be parsed (truncated, unparsable)."""
CANNOT_UNDERSTAND_NO_ROUTE: Final = 0xC001
"""Refused: no route for this instance (no destination is configured or available)."""
PROCESSING_FAILURE: Final = 0x0110
NO_SUCH_SOP_CLASS: Final = 0x0118
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
NOT_AUTHORIZED: Final = 0x0124
DUPLICATE_INVOCATION: Final = 0x0210
UNRECOGNIZED_OPERATION: Final = 0x0211
MISTYPED_ARGUMENT: Final = 0x0212


def is_success_or_warning(status: int) -> bool:
    """True when a C-STORE-RSP status means the peer stored the instance."""
    return (
        status == SUCCESS
        or (status & 0xF000) == 0xB000
        or status == WARNING_ATTRIBUTE_LIST_ERROR
    )


def is_out_of_resources(status: int) -> bool:
    return (status & 0xFF00) == OUT_OF_RESOURCES


def is_permanent_failure(status: int) -> bool:
    """A refusal that retrying the same bytes will not change."""
    return status in (
        SOP_CLASS_NOT_SUPPORTED,
        NOT_AUTHORIZED,
        MISTYPED_ARGUMENT,
        UNRECOGNIZED_OPERATION,
    ) or (status & 0xFF00) == DATASET_DOES_NOT_MATCH_SOP_CLASS or (status & 0xF000) == 0xC000


ERROR_COMMENT_MAX = 64
"""Error Comment (0000,0902) is an LO: at most 64 characters."""


def error_comment(reason: str) -> str:
    """``reason`` made fit for Error Comment: one line of printable characters without a
    backslash, at most 64 characters (cut with an ellipsis). The caller keeps patient data
    out of it."""
    kept = "".join(c if c.isascii() and c.isprintable() and c != "\\" else " " for c in reason)
    text = " ".join(kept.split())
    if len(text) > ERROR_COMMENT_MAX:
        text = text[:ERROR_COMMENT_MAX - 3].rstrip() + "..."
    return text


def describe(status: int) -> str:
    names = {
        SUCCESS: "success",
        OUT_OF_RESOURCES: "out of resources",
        DATASET_DOES_NOT_MATCH_SOP_CLASS: "dataset does not match SOP class",
        CANNOT_UNDERSTAND: "cannot understand",
        PROCESSING_FAILURE: "processing failure",
        NO_SUCH_SOP_CLASS: "no such SOP class",
        SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
        NOT_AUTHORIZED: "not authorized",
        DUPLICATE_INVOCATION: "duplicate invocation",
        UNRECOGNIZED_OPERATION: "unrecognized operation",
        MISTYPED_ARGUMENT: "mistyped argument",
    }
    name = names.get(status)
    if name is None:
        if is_out_of_resources(status):
            name = "out of resources"
        elif (status & 0xF000) == 0xC000:
            name = "cannot understand"
        elif (status & 0xF000) == 0xB000:
            name = "warning"
        else:
            name = "failure"
    return f"0x{status:04X} ({name})"
