"""Transfer-syntax fallback, without a network: what an association proposes, how an
answer is read (send as is, transcode, or refuse with the reason), what is learned, and
when a receiver refuses an instance a destination is known to refuse."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from dde.dicom.engine.negotiation import AcceptedContext, Negotiated, ProposedContext
from dde.endpoints import syntax_fallback
from dde.receiving.deliverability import Deliverability, Undeliverable
from dde.store.capabilities import LearnedPair
from dde.store.ledger import Ledger

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
PRIVATE_SYNTAX = "1.2.3.4.5"
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def answered(contexts: list[ProposedContext], accepted: dict[int, str]) -> Negotiated:
    """The acceptor's answer: context number (0-based) → the syntax it chose."""
    return Negotiated(tuple(AcceptedContext(2 * index + 1, contexts[index].abstract_syntax,
                                            syntax) for index, syntax in accepted.items()), 0)


def test_each_pair_alone_and_once_per_sop_class_the_uncompressed_fallback() -> None:
    contexts, covered = syntax_fallback.proposals(
        [(CT, JPEG2000Lossless), (CT, HTJ2KLossless), (MR, ExplicitVRLittleEndian),
         (MR, PRIVATE_SYNTAX)], 128, transcoding=True)
    assert contexts == [
        ProposedContext(CT, (JPEG2000Lossless,)), ProposedContext(CT, UNCOMPRESSED),
        ProposedContext(CT, (HTJ2KLossless,)),
        ProposedContext(MR, (ExplicitVRLittleEndian,)),
        ProposedContext(MR, (ImplicitVRLittleEndian,)),
        ProposedContext(MR, (PRIVATE_SYNTAX,)),  # nothing decodes it: no fallback
    ]
    assert len(covered) == 4


def test_without_transcoding_only_the_pairs_and_the_limit_holds() -> None:
    contexts, _ = syntax_fallback.proposals([(CT, JPEG2000Lossless)], 128, transcoding=False)
    assert contexts == [ProposedContext(CT, (JPEG2000Lossless,))]
    contexts, covered = syntax_fallback.proposals(
        [(CT, JPEG2000Lossless), (MR, JPEG2000Lossless)], 3, transcoding=True)
    assert len(contexts) == 2 and covered == [(CT, JPEG2000Lossless)]


def test_sent_as_is_when_accepted_transcoded_when_only_the_fallback_was() -> None:
    contexts, _ = syntax_fallback.proposals([(CT, JPEG2000Lossless)], 128, True)
    as_is = syntax_fallback.plan(answered(contexts, {0: JPEG2000Lossless}), "PACS", CT,
                                 JPEG2000Lossless, transcoding=True)
    assert as_is.context is not None and as_is.target_syntax is None
    fallback = syntax_fallback.plan(answered(contexts, {1: ImplicitVRLittleEndian}), "PACS",
                                    CT, JPEG2000Lossless, transcoding=True)
    assert fallback.context is not None and fallback.context.context_id == 3
    assert fallback.target_syntax == ImplicitVRLittleEndian


def test_the_reason_names_the_sop_class_or_the_syntax() -> None:
    contexts, _ = syntax_fallback.proposals([(CT, JPEG2000Lossless)], 128, True)
    refused = syntax_fallback.plan(answered(contexts, {}), "PACS", CT, JPEG2000Lossless, True)
    assert refused.context is None
    assert refused.reason == ("PACS does not accept CT Image Storage in any transfer syntax "
                              "proposed (SOP class refused; presentation context rejected)")
    undecodable = syntax_fallback.plan(answered([ProposedContext(CT, (PRIVATE_SYNTAX,)),
                                                 ProposedContext(CT, UNCOMPRESSED)],
                                                {1: ExplicitVRLittleEndian}),
                                       "PACS", CT, PRIVATE_SYNTAX, True)
    assert undecodable.context is None
    assert "the router cannot transcode it" in undecodable.reason


def test_what_an_answer_teaches() -> None:
    contexts, _ = syntax_fallback.proposals([(CT, JPEG2000Lossless)], 128, True)
    assert syntax_fallback.learned(contexts, answered(contexts, {1: ExplicitVRLittleEndian})) \
        == [LearnedPair(CT, JPEG2000Lossless, False),
            LearnedPair(CT, ExplicitVRLittleEndian, True)]


def test_a_transcoded_copy_is_removed_after_use(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file("MR_small_RLE.dcm"))
    with syntax_fallback.transcoded_copy(source, ExplicitVRLittleEndian, tmp_path,
                                         10**7) as copy:
        assert copy.parent == tmp_path and copy.stat().st_size > source.stat().st_size
    assert list(tmp_path.iterdir()) == []


def learn(ledger: Ledger, *pairs: tuple[str, str, bool]) -> None:
    ledger.capabilities.learn("PACS", [LearnedPair(*pair) for pair in pairs], time.time())


def test_refused_when_the_class_or_every_syntax_was_refused(sqlite_ledger: Ledger) -> None:
    check = Deliverability(sqlite_ledger.capabilities, max_age=60, transcoding=True).check
    check(["PACS"], CT, JPEG2000Lossless)  # nothing known yet: deliverable
    learn(sqlite_ledger, (MR, ExplicitVRLittleEndian, False), (MR, ImplicitVRLittleEndian, False),
          (CT, JPEG2000Lossless, False), (CT, ExplicitVRLittleEndian, True),
          (CT, PRIVATE_SYNTAX, False))
    check = Deliverability(sqlite_ledger.capabilities, max_age=60, transcoding=True).check
    check(["PACS"], CT, JPEG2000Lossless)  # transcoding helps
    with pytest.raises(Undeliverable, match="PACS refuses MR Image Storage"):
        check(["OTHER", "PACS"], MR, ExplicitVRLittleEndian)
    with pytest.raises(Undeliverable, match="refuses 1.2.3.4.5 for CT Image Storage"):
        check(["PACS"], CT, PRIVATE_SYNTAX)  # nothing decodes it
    without = Deliverability(sqlite_ledger.capabilities, max_age=60, transcoding=False).check
    with pytest.raises(Undeliverable):
        without(["PACS"], CT, JPEG2000Lossless)
    check(["OTHER"], MR, ExplicitVRLittleEndian)  # another destination: not known


def test_what_was_learned_long_ago_is_not_trusted(sqlite_ledger: Ledger) -> None:
    sqlite_ledger.capabilities.learn("PACS", [LearnedPair(MR, ExplicitVRLittleEndian, False),
                                              LearnedPair(MR, ImplicitVRLittleEndian, False)],
                                     time.time() - 120)
    Deliverability(sqlite_ledger.capabilities, max_age=60, transcoding=True).check(
        ["PACS"], MR, ExplicitVRLittleEndian)
