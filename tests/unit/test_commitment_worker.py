"""A delivery worker of an endpoint with storage commitment: one N-ACTION per study of each
delivered batch, after the C-STOREs; a refused request queues the deliveries again; an
endpoint without it asks nothing; the janitor fails what is never reported."""

from __future__ import annotations

import time

from tests.support.orthanc import wait_until
from tests.support.unitkit import FakeSender, endpoint, generated, ingest_to

from dde.delivery.commitment import plan
from dde.delivery.dispatcher import Dispatcher, EndpointWorker
from dde.delivery.retry import RetryPolicy
from dde.dicom.commitment import CommitmentRequest
from dde.endpoints.load import LoadBook
from dde.endpoints.sending import CommitmentRequester
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome
from dde.store.spool import Spool, encode_file_meta
from dde.store.states import DeliveryState

POLICY = RetryPolicy(max_attempts=3, base=0.02, cap=0.05)
TIMEOUT = 10.0


class CommittingSender(FakeSender):
    """A sender that records its N-ACTIONs (and calls), answering each with ``problem``."""

    def __init__(self, problem: str | None = None) -> None:
        super().__init__()
        self.problem = problem
        self.requests: list[CommitmentRequest] = []
        self.calls: list[str] = []

    def send(self, shipment: object) -> object:  # type: ignore[override]
        self.calls.append("send")
        return super().send(shipment)  # type: ignore[arg-type]

    def abort(self) -> None:
        """Nothing in flight to drop."""

    def request_commitment(self, request: CommitmentRequest) -> str | None:
        self.calls.append("n-action")
        self.requests.append(request)
        return self.problem


def spool_study(ledger: Ledger, spool: Spool, study: str, count: int) -> None:
    for _ in range(count):
        instance = generated()
        written = spool.write(encode_file_meta(instance.sop_class_uid,
                                               instance.sop_instance_uid,
                                               instance.transfer_syntax_uid), instance.dataset)
        ingest_to(ledger, ["A"], spool_path=written.relative_path,
                  sop_instance_uid=instance.sop_instance_uid, study_instance_uid=study)


def start(workers: list[EndpointWorker], ledger: Ledger, spool: Spool,
          sender: CommittingSender, commitment: bool = True) -> None:
    worker = EndpointWorker(endpoint("A", storage_commitment=commitment), ledger, spool,
                            sender, POLICY, LoadBook(60.0), batch_size=16, idle_release=5.0,
                            poll=0.05)
    workers.append(worker)
    worker.start()


def test_one_n_action_per_study_after_the_batch(ledger: Ledger, spool: Spool,
                                                workers: list[EndpointWorker]) -> None:
    spool_study(ledger, spool, "1.2.1", 3)
    spool_study(ledger, spool, "1.2.2", 2)
    sender = CommittingSender()
    assert isinstance(sender, CommitmentRequester)

    start(workers, ledger, spool, sender)

    wait_until(lambda: len(sender.requests) == 2, TIMEOUT, "two N-ACTIONs")
    assert sender.calls == ["send"] * 5 + ["n-action"] * 2
    assert [len(r.references) for r in sender.requests] == [3, 2]
    assert {r.sop_instance_uid for r in sender.requests[0].references} | {
        r.sop_instance_uid for r in sender.requests[1].references} == set(sender.sent_uids())
    assert ledger.commitments.counts() == {"A": {"pending": 2}}


def test_a_refused_n_action_queues_the_deliveries_again(ledger: Ledger, spool: Spool,
                                                        workers: list[EndpointWorker]) -> None:
    spool_study(ledger, spool, "1.2.1", 1)
    sender = CommittingSender("N-ACTION refused: 0x0110 (processing failure)")

    start(workers, ledger, spool, sender)

    # sent, refused, sent again … until its attempts are spent: failed with the reason
    wait_until(lambda: [d.state for d in ledger.diagnostics.deliveries()] == ["failed"],
                TIMEOUT, "failed after its attempts")
    (delivery,) = ledger.diagnostics.deliveries()
    assert delivery.attempts == POLICY.max_attempts == len(sender.sent)
    assert delivery.last_error == ("storage commitment failed: N-ACTION refused: 0x0110 "
                                   "(processing failure)")
    assert ledger.commitments.counts() == {"A": {"failed": POLICY.max_attempts}}


def test_an_endpoint_without_commitment_asks_nothing(ledger: Ledger, spool: Spool,
                                                     workers: list[EndpointWorker]) -> None:
    spool_study(ledger, spool, "1.2.1", 2)
    sender = CommittingSender()

    start(workers, ledger, spool, sender, commitment=False)

    wait_until(lambda: all(d.state == "delivered" for d in ledger.diagnostics.deliveries()),
               TIMEOUT, "delivered")
    assert sender.requests == [] and ledger.commitments.counts() == {}


def test_the_janitor_fails_what_is_never_reported(ledger: Ledger, spool: Spool) -> None:
    spool_study(ledger, spool, "1.2.1", 1)
    batch = ledger.queue.claim("A", "w", time.time(), 10, 60)
    outcomes = [DeliveryOutcome(batch[0].id, DeliveryState.DELIVERED)]
    ledger.queue.record_outcomes(outcomes, time.time() - 100,
                                 commitments=plan("A", batch, outcomes))
    dispatcher = Dispatcher(ledger, spool, POLICY, LoadBook(60.0), lambda e: FakeSender(),
                            batch_size=4, idle_release=1, poll=1, retention=0,
                            commitment_timeout=50)

    assert dispatcher.expire_commitments_once() == 1
    (delivery,) = ledger.diagnostics.deliveries()
    assert delivery.state == "pending"
    assert delivery.last_error == ("storage commitment failed: no storage commitment report "
                                   "within 50 s")
