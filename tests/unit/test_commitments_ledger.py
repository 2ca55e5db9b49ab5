"""Storage commitment states in the ledger, on SQLite and PostgreSQL: pending with the
outcome, committed or failed by the report, a failed one queued again (or failed when its
attempts are spent), unreported ones expiring, spool files kept while a commitment is
pending, and what ``dde where`` shows."""

from __future__ import annotations

import time
from collections.abc import Set as AbstractSet

from tests.support.unitkit import ingest_to

from dde.delivery.commitment import CommitmentRecorder, plan
from dde.delivery.retry import RetryPolicy
from dde.dicom import status as dimse
from dde.dicom.commitment import (
    CommitmentReport,
    FailedReference,
    FailureReason,
    SopReference,
)
from dde.reports import where_document
from dde.store.commitments import NewCommitment
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome, QueuedDelivery
from dde.store.states import DeliveryState

ENDPOINT = "ORTHANC1"
POLICY = RetryPolicy(max_attempts=8, base=0.0001, cap=0.0001)
"""Re-queued deliveries due at once (well, after a tenth of a millisecond)."""


def delivered_with_commitment(ledger: Ledger, studies: dict[str, int],
                              now: float | None = None) -> tuple[list[QueuedDelivery],
                                                                  list[NewCommitment]]:
    """Instances of ``studies`` ({study: how many}) delivered in one batch, their
    commitments written with the outcomes."""
    for study, how_many in studies.items():
        for _ in range(how_many):
            ingest_to(ledger, [ENDPOINT], study_instance_uid=study)
    batch = ledger.queue.claim(ENDPOINT, "worker", time.time(), 100, 60)
    outcomes = [DeliveryOutcome(item.id, DeliveryState.DELIVERED) for item in batch]
    commitments = plan(ENDPOINT, batch, outcomes)
    ledger.queue.record_outcomes(outcomes, now, commitments=commitments)
    return batch, commitments


def shown(ledger: Ledger, item: QueuedDelivery) -> dict[str, object]:
    document = where_document(ledger.operators.where(item.sop_instance_uid))
    return dict(document["deliveries"][0])


def report_for(commitment: NewCommitment, failed: AbstractSet[str] = frozenset(),
               missing: AbstractSet[str] = frozenset()) -> CommitmentReport:
    refs = [(SopReference(i.sop_class_uid, i.sop_instance_uid)) for i in commitment.items
            if i.sop_instance_uid not in missing]
    return CommitmentReport(
        commitment.transaction_uid, 2 if failed else 1,
        tuple(r for r in refs if r.sop_instance_uid not in failed),
        tuple(FailedReference(r, FailureReason.NO_SUCH_OBJECT_INSTANCE)
              for r in refs if r.sop_instance_uid in failed))


def test_one_transaction_per_study_pending_until_reported(ledger: Ledger) -> None:
    batch, commitments = delivered_with_commitment(ledger, {"1.2.1": 2, "1.2.2": 1})

    assert [len(c.items) for c in commitments] == [2, 1]
    assert {shown(ledger, item)["commitment"] for item in batch} == {"pending"}
    assert ledger.commitments.counts() == {ENDPOINT: {"pending": 2}}

    recorder = CommitmentRecorder(ledger, POLICY)
    assert recorder.report(report_for(commitments[0]), "ORTHANC1") == dimse.SUCCESS

    states = [shown(ledger, item)["commitment"] for item in batch]
    assert states == ["committed", "committed", "pending"]
    assert ledger.commitments.counts() == {ENDPOINT: {"committed": 1, "pending": 1}}


def test_a_failed_instance_is_queued_again_with_the_reason(ledger: Ledger) -> None:
    batch, (commitment,) = delivered_with_commitment(ledger, {"1.2.1": 2})
    lost = batch[1].sop_instance_uid

    result = ledger.commitments.report(report_for(commitment, failed={lost}), max_attempts=8)

    assert (result.endpoint, result.committed, result.failed) == (ENDPOINT, 1, 1)
    assert result.requeued == [batch[1].id]
    kept, again = shown(ledger, batch[0]), shown(ledger, batch[1])
    assert (kept["state"], kept["commitment"]) == ("delivered", "committed")
    assert (again["state"], again["commitment"], again["attempts"]) == ("pending", "failed", 1)
    assert again["commitment_reason"] == ("the destination did not commit: "
                                          "0x0112 (no such object instance)")
    assert str(again["last_error"]).startswith("storage commitment failed: ")
    assert [d.id for d in ledger.queue.due(ENDPOINT, time.time() + 1, 10)] == [batch[1].id]
    assert ledger.commitments.counts() == {ENDPOINT: {"failed": 1}}


def test_an_instance_the_report_does_not_name_fails_too(ledger: Ledger) -> None:
    batch, (commitment,) = delivered_with_commitment(ledger, {"1.2.1": 2})

    ledger.commitments.report(report_for(commitment, missing={batch[0].sop_instance_uid}), 8)

    assert shown(ledger, batch[0])["commitment_reason"] == (
        "the commitment report does not name it")
    assert shown(ledger, batch[0])["state"] == "pending"


def test_attempts_spent_fail_the_delivery(ledger: Ledger) -> None:
    batch, (commitment,) = delivered_with_commitment(ledger, {"1.2.1": 1})

    result = ledger.commitments.report(
        report_for(commitment, failed={batch[0].sop_instance_uid}), max_attempts=1)

    assert result.given_up == [batch[0].id] and result.requeued == []
    assert shown(ledger, batch[0])["state"] == "failed"


def test_a_report_twice_or_for_an_unknown_transaction_changes_nothing(ledger: Ledger) -> None:
    batch, (commitment,) = delivered_with_commitment(ledger, {"1.2.1": 1})
    recorder = CommitmentRecorder(ledger, POLICY)
    recorder.report(report_for(commitment), "ORTHANC1")

    again = report_for(commitment, failed={batch[0].sop_instance_uid})
    assert recorder.report(again, "ORTHANC1") == dimse.SUCCESS
    assert recorder.report(CommitmentReport("2.25.1", 1, (), ()), "X") == dimse.SUCCESS

    assert (shown(ledger, batch[0])["state"], shown(ledger, batch[0])["commitment"]) == (
        "delivered", "committed")


def test_an_unreported_transaction_expires_and_its_deliveries_go_again(ledger: Ledger) -> None:
    batch, _ = delivered_with_commitment(ledger, {"1.2.1": 1}, now=time.time() - 100)
    recorder = CommitmentRecorder(ledger, POLICY)

    assert recorder.expire(timeout=200) == 0
    assert recorder.expire(timeout=50) == 1

    found = shown(ledger, batch[0])
    assert (found["state"], found["commitment"]) == ("pending", "failed")
    assert found["commitment_reason"] == "no storage commitment report within 50 s"


def test_a_refused_request_fails_the_transaction_at_once(ledger: Ledger) -> None:
    batch, (commitment,) = delivered_with_commitment(ledger, {"1.2.1": 2})

    result = CommitmentRecorder(ledger, POLICY).fail(commitment.transaction_uid,
                                                "N-ACTION refused: 0x0110")

    assert sorted(result.requeued) == sorted(item.id for item in batch)
    assert {shown(ledger, item)["commitment_reason"] for item in batch} == {
        "N-ACTION refused: 0x0110"}


def test_the_spool_file_stays_while_a_commitment_is_pending(ledger: Ledger) -> None:
    batch, (commitment,) = delivered_with_commitment(ledger, {"1.2.1": 1},
                                                     now=time.time() - 100)
    since = time.time() - 1000
    assert ledger.spool_index.releasable_spool_files(time.time()) == []
    assert ledger.spool_index.releasable_spool_files(time.time(), since=since) == []

    ledger.commitments.report(report_for(commitment), 8)

    expected = [(batch[0].instance_id, batch[0].spool_path)]
    assert ledger.spool_index.releasable_spool_files(time.time()) == expected
    # looked at again although it was delivered long before: its commitment is new
    assert ledger.spool_index.releasable_spool_files(time.time(), since=time.time() - 10) \
        == expected


def test_history_keeps_every_transaction_and_where_shows_the_latest(ledger: Ledger) -> None:
    batch, (first,) = delivered_with_commitment(ledger, {"1.2.1": 1}, now=time.time() - 10)
    ledger.commitments.report(report_for(first, failed={batch[0].sop_instance_uid}), 8)
    again = ledger.queue.claim(ENDPOINT, "worker", time.time(), 10, 60)
    outcomes = [DeliveryOutcome(again[0].id, DeliveryState.DELIVERED)]
    (second,) = plan(ENDPOINT, again, outcomes)
    ledger.queue.record_outcomes(outcomes, commitments=[second])
    ledger.commitments.report(report_for(second), 8)

    history = ledger.commitments.history(batch[0].id)
    assert [h.state.value for h in history] == ["failed", "committed"]
    assert [h.transaction_uid for h in history] == [first.transaction_uid,
                                                    second.transaction_uid]
    found = shown(ledger, batch[0])
    assert (found["commitment"], found["commitment_reason"], found["attempts"]) == (
        "committed", None, 2)


def test_deliveries_without_commitment_show_null(ledger: Ledger) -> None:
    instance = ingest_to(ledger, [ENDPOINT])
    (delivery,) = ledger.diagnostics.deliveries(instance_id=instance)
    ledger.queue.record_outcomes([DeliveryOutcome(delivery.id, DeliveryState.DELIVERED)])

    found = where_document(ledger.operators.where(delivery.sop_instance_uid))["deliveries"][0]
    assert (found["commitment"], found["commitment_reason"]) == (None, None)
    total, summaries = ledger.operators.search()
    assert total == 1 and summaries[0].deliveries[0].commitment is None


def test_a_requeued_delivery_waits_the_backoff(ledger: Ledger) -> None:
    batch, (commitment,) = delivered_with_commitment(ledger, {"1.2.1": 1})
    slow = CommitmentRecorder(ledger, RetryPolicy(max_attempts=8, base=100, cap=100))

    slow.fail(commitment.transaction_uid, "N-ACTION refused")

    assert ledger.queue.due(ENDPOINT, time.time() + 10, 10) == []
    assert [d.id for d in ledger.queue.due(ENDPOINT, time.time() + 101, 10)] == [batch[0].id]


def test_a_delivery_moved_to_another_endpoint_shows_no_commitment_of_the_old_one(
        ledger: Ledger) -> None:
    batch, (commitment,) = delivered_with_commitment(ledger, {"1.2.1": 1})
    ledger.commitments.report(report_for(commitment, failed={batch[0].sop_instance_uid}), 8)
    assert shown(ledger, batch[0])["commitment"] == "failed"

    ledger.moves.redirect_all(ENDPOINT, "ORTHANC2", "removed")

    moved = shown(ledger, batch[0])
    assert (moved["endpoint"], moved["commitment"]) == ("ORTHANC2", None)
    assert [h.endpoint for h in ledger.commitments.history(batch[0].id)] == [ENDPOINT]
