"""What the ledger keeps of each destination's presentation-context answers, and of each
transcoded delivery (both backends)."""

from __future__ import annotations

import time

from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from tests.support.unitkit import delivery_rows, ingest_to

from dde.reports import where_document
from dde.store.capabilities import LearnedPair
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_the_latest_answer_wins_and_old_ones_are_not_used(ledger: Ledger) -> None:
    now = time.time()
    ledger.capabilities.learn("PACS", [LearnedPair(CT, JPEG2000Lossless, False),
                                       LearnedPair(CT, ExplicitVRLittleEndian, True)], now - 50)
    ledger.capabilities.learn("PACS", [LearnedPair(CT, JPEG2000Lossless, True)], now)
    assert ledger.capabilities.answers(max_age=100, now=now) == {
        ("PACS", CT, JPEG2000Lossless): True, ("PACS", CT, ExplicitVRLittleEndian): True}
    assert ledger.capabilities.answers(max_age=10, now=now) == {
        ("PACS", CT, JPEG2000Lossless): True}


def test_forget_drops_one_endpoints_answers(ledger: Ledger) -> None:
    ledger.capabilities.learn("A", [LearnedPair(CT, JPEG2000Lossless, False)])
    ledger.capabilities.learn("B", [LearnedPair(CT, JPEG2000Lossless, False)])
    assert ledger.capabilities.forget("A") == 1
    assert set(ledger.capabilities.answers(max_age=60)) == {("B", CT, JPEG2000Lossless)}


def test_a_transcoded_delivery_says_so_in_where(ledger: Ledger) -> None:
    instance_id = ingest_to(ledger, ["PACS"], ["PROBE"], sop_instance_uid="1.2.3.4",
                            transfer_syntax_uid=JPEG2000Lossless)
    rows = delivery_rows(ledger, instance_id)
    ledger.queue.record_outcomes([
        DeliveryOutcome(rows["PACS"][0], DeliveryState.DELIVERED,
                        transfer_syntax_uid=ExplicitVRLittleEndian,
                        transcoded_from=JPEG2000Lossless),
        DeliveryOutcome(rows["PROBE"][0], DeliveryState.DELIVERED)])
    document = where_document(ledger.operators.where("1.2.3.4"))
    by_endpoint = {d["endpoint"]: d for d in document["deliveries"]}
    assert by_endpoint["PACS"]["transfer_syntax_uid"] == ExplicitVRLittleEndian
    assert by_endpoint["PACS"]["transcoded_from"] == JPEG2000Lossless
    assert by_endpoint["PROBE"]["transfer_syntax_uid"] == JPEG2000Lossless  # as received
    assert by_endpoint["PROBE"]["transcoded_from"] is None
    total, found_by_search = ledger.operators.search(limit=5)
    assert total == 1
    searched = {d.endpoint: d for d in found_by_search[0].deliveries}
    assert searched["PACS"].transcoded_from == JPEG2000Lossless
