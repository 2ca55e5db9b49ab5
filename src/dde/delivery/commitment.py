"""Storage commitment on the delivery side: which N-ACTIONs a delivered batch makes, sending
them, and what the reports (and their absence) do to the ledger.

One transaction per study of each delivered batch (PS3.4 J.3.2: one N-ACTION may name any
set of instances; per study keeps a report's meaning aligned with what operators look at,
and bounds a transaction by the batch size). The transactions are written pending with the
outcomes (one ledger transaction), then asked for on the worker's association. A report
is recorded by :class:`CommitmentRecorder` wherever it arrives: the router's receiver (main
process or receiver processes) or the delivering association itself. A transaction with no
report after ``delivery.commitment_timeout_seconds`` fails, and its deliveries are sent
again (:meth:`CommitmentRecorder.expire`, run by the spool janitor).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from dde.config import DeliverySettings
from dde.delivery.retry import RetryPolicy
from dde.dicom import status as dimse
from dde.dicom.commitment import (
    CommitmentReport,
    CommitmentRequest,
    SopReference,
    new_transaction_uid,
)
from dde.endpoints.sending import CommitmentRequester
from dde.store.commitments import CommitmentItem, CommitmentResult, NewCommitment
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome, QueuedDelivery
from dde.store.states import DeliveryState

log = logging.getLogger(__name__)


def plan(endpoint: str, batch: Sequence[QueuedDelivery],
         outcomes: Sequence[DeliveryOutcome]) -> list[NewCommitment]:
    """The transactions for the deliveries of ``batch`` that ``outcomes`` deliver: one per
    study, in batch order."""
    delivered = {o.delivery_id for o in outcomes if o.state is DeliveryState.DELIVERED}
    by_study: dict[str, list[CommitmentItem]] = {}
    for item in batch:
        if item.id in delivered:
            by_study.setdefault(item.study_instance_uid or "", []).append(
                CommitmentItem(item.id, item.sop_class_uid, item.sop_instance_uid))
    return [NewCommitment(new_transaction_uid(), endpoint, tuple(items))
            for items in by_study.values()]


def request(sender: CommitmentRequester, recorder: CommitmentRecorder,
            commitments: Sequence[NewCommitment]) -> None:
    """Send one N-ACTION per transaction; one the destination does not take fails at once
    (its deliveries are queued again)."""
    for commitment in commitments:
        problem = sender.request_commitment(CommitmentRequest(
            commitment.transaction_uid,
            tuple(SopReference(i.sop_class_uid, i.sop_instance_uid) for i in commitment.items)))
        if problem is None:
            log.info("storage commitment of %d instances asked of %s (transaction %s)",
                     len(commitment.items), commitment.endpoint, commitment.transaction_uid)
            continue
        log.warning("storage commitment of %d instances to %s failed: %s",
                    len(commitment.items), commitment.endpoint, problem)
        recorder.fail(commitment.transaction_uid, problem)


class CommitmentRecorder:
    """Writes what is learned of commitments to the ledger, and says it in the log. A
    delivery queued again waits the retry policy's backoff (a PACS that refuses every
    N-ACTION is not sent the instances in a tight loop)."""

    def __init__(self, ledger: Ledger, policy: RetryPolicy) -> None:
        self._ledger = ledger
        self.policy = policy

    @classmethod
    def of(cls, ledger: Ledger, delivery: DeliverySettings) -> CommitmentRecorder:
        return cls(ledger, RetryPolicy(delivery.max_attempts, delivery.backoff_base_seconds,
                                       delivery.backoff_cap_seconds))

    def report(self, report: CommitmentReport, calling_aet: str) -> int:
        """An N-EVENT-REPORT; the status to answer (a ledger error: processing failure,
        so the PACS may report again)."""
        try:
            result = self._ledger.commitments.report(report, self.policy.max_attempts,
                                                     backoff=self.policy.backoff)
        except LedgerError as exc:
            log.error("a storage commitment report from %s was not recorded: %s",
                      calling_aet, exc)
            return dimse.PROCESSING_FAILURE
        if result.endpoint is None:
            log.warning("a storage commitment report from %s for transaction %s, which is "
                        "not pending (unknown, or reported before): ignored", calling_aet,
                        report.transaction_uid)
            return dimse.SUCCESS
        self._say(result, report.transaction_uid)
        return dimse.SUCCESS

    def fail(self, transaction_uid: str, reason: str) -> CommitmentResult:
        result = self._ledger.commitments.fail(transaction_uid, reason,
                                               self.policy.max_attempts,
                                               backoff=self.policy.backoff)
        if result.endpoint is not None:
            self._say(result, transaction_uid)
        return result

    def expire(self, timeout: float, now: float | None = None) -> int:
        """Fail the transactions with no report after ``timeout`` seconds; how many."""
        now = time.time() if now is None else now
        expired = self._ledger.commitments.expired(now - timeout)
        for transaction_uid in expired:
            self.fail(transaction_uid, f"no storage commitment report within {timeout:g} s")
        return len(expired)

    @staticmethod
    def _say(result: CommitmentResult, transaction_uid: str) -> None:
        if not result.failed:
            log.info("%s committed to %d instances (transaction %s)", result.endpoint,
                     result.committed, transaction_uid)
            return
        log.warning("%s did not commit to %d of %d instances (transaction %s): %d queued "
                    "again, %d failed (attempts spent)", result.endpoint, result.failed,
                    result.failed + result.committed, transaction_uid, len(result.requeued),
                    len(result.given_up))
