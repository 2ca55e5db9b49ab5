"""Transfer-syntax fallback for DICOM destinations: what to propose, what the answer means,
and the transcoded copy a delivery sends when the original syntax was refused.

For each (SOP class, transfer syntax) pair about to be sent, an association proposes the
instance's own syntax alone (sent byte for byte when accepted) and, when the router can
transcode from it, one more context for the SOP class with the uncompressed little-endian
syntaxes (:data:`~dde.dicom.transcoding.UNCOMPRESSED_LITTLE_ENDIAN`) — so a destination
that refuses, say, HTJ2K still gets the image, decoded losslessly, in the same association.
The answers are what the router learns about the destination (:func:`learned`).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dde.dicom.engine.negotiation import AcceptedContext, Negotiated, ProposedContext
from dde.dicom.transcoding import UNCOMPRESSED_LITTLE_ENDIAN, can_transcode, transcode
from dde.dicom.uids import uid_name
from dde.store.capabilities import LearnedPair

Pair = tuple[str, str]


def proposals(pairs: Sequence[Pair], max_contexts: int, transcoding: bool
              ) -> tuple[list[ProposedContext], list[Pair]]:
    """The contexts to propose for ``pairs`` (in order, within ``max_contexts``) and the
    pairs they cover: each pair's own syntax, then, once per SOP class, the uncompressed
    syntaxes it can be transcoded to (``transcoding``: allowed at all)."""
    contexts: list[ProposedContext] = []
    covered: list[Pair] = []
    with_fallback: set[str] = set()
    for sop_class, syntax in pairs:
        fallback = _fallback_syntaxes(syntax) if transcoding else ()
        needed = 1 + (1 if fallback and sop_class not in with_fallback else 0)
        if len(contexts) + needed > max_contexts:
            break
        contexts.append(ProposedContext(sop_class, (syntax,)))
        if needed == 2:
            contexts.append(ProposedContext(sop_class, fallback))
            with_fallback.add(sop_class)
        covered.append((sop_class, syntax))
    return contexts, covered


def _fallback_syntaxes(syntax: str) -> tuple[str, ...]:
    if not can_transcode(syntax):
        return ()
    return tuple(s for s in UNCOMPRESSED_LITTLE_ENDIAN if s != syntax)


@dataclass(frozen=True)
class Plan:
    """How one instance goes over a negotiated association."""

    context: AcceptedContext | None
    target_syntax: str | None = None
    """Transcode to this syntax first (None: send the spool file as it is)."""
    reason: str = ""
    """Why it cannot go at all (``context`` None)."""


def plan(negotiated: Negotiated, endpoint: str, sop_class: str, syntax: str,
         transcoding: bool) -> Plan:
    """As is when the destination accepted the pair; else transcoded to an uncompressed
    syntax it accepted for the SOP class; else the reason it cannot be delivered."""
    context = negotiated.context_for(sop_class, syntax)
    if context is not None:
        return Plan(context)
    if transcoding and can_transcode(syntax):
        for target in UNCOMPRESSED_LITTLE_ENDIAN:
            fallback = negotiated.context_for(sop_class, target)
            if fallback is not None and target != syntax:
                return Plan(fallback, target)
    accepts_class = any(c.abstract_syntax == sop_class for c in negotiated.accepted)
    decodable = can_transcode(syntax)
    if not accepts_class and transcoding and decodable:  # uncompressed was refused too
        return Plan(None, reason=f"{endpoint} does not accept {uid_name(sop_class)} in any "
                                 "transfer syntax proposed (SOP class refused; presentation "
                                 "context rejected)")
    how = ("and the router cannot transcode it" if not decodable
           else "nor uncompressed" if transcoding else "(transcoding is off)")
    return Plan(None, reason=f"{endpoint} does not accept {uid_name(sop_class)} in "
                             f"{uid_name(syntax)} {how} (presentation context rejected)")


def learned(contexts: Sequence[ProposedContext], negotiated: Negotiated) -> list[LearnedPair]:
    """What the answer to ``contexts`` says about each (SOP class, syntax) proposed: the
    syntax chosen in an accepted context is accepted; every syntax of a rejected one is
    refused (the others of an accepted multi-syntax context stay unknown)."""
    accepted = {context.context_id: context for context in negotiated.accepted}
    pairs: list[LearnedPair] = []
    for index, proposed in enumerate(contexts):
        answer = accepted.get(2 * index + 1)
        if answer is not None:
            pairs.append(LearnedPair(proposed.abstract_syntax, answer.transfer_syntax, True))
        else:
            pairs += [LearnedPair(proposed.abstract_syntax, syntax, False)
                      for syntax in proposed.transfer_syntaxes]
    return pairs


@contextmanager
def transcoded_copy(source: Path, target_syntax: str, scratch: Path | None,
                    max_bytes: int) -> Iterator[Path]:
    """A transcoded copy of ``source`` in ``scratch`` (removed afterwards);
    :class:`~dde.dicom.transcoding.TranscodeError` when it cannot be made."""
    folder = scratch if scratch is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"transcoded-{uuid.uuid4().hex}.dcm"
    try:
        transcode(source, copy, target_syntax, max_bytes)
        yield copy
    finally:
        try:
            os.unlink(copy)
        except FileNotFoundError:
            pass
