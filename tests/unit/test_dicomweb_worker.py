"""A delivery worker feeding a STOW-RS sender: a claimed batch goes study by study, one
request each; per-instance outcomes reach the ledger; a throttle defers the batch."""

from __future__ import annotations

import time
from typing import Any

import httpx
from tests.support.orthanc import wait_until
from tests.support.stowkit import StowServer, stow_answer
from tests.support.unitkit import delivery_rows, generated, ingest_to

from dde.config import DeliverySettings, EndpointSettings
from dde.delivery.retry import RetryPolicy
from dde.delivery.worker import EndpointWorker
from dde.endpoints.dicomweb_sender import DicomWebSender
from dde.endpoints.load import LoadBook
from dde.endpoints.stow_rs import SOP_CLASS_NOT_SUPPORTED
from dde.store.ledger import Ledger
from dde.store.spool import Spool, encode_file_meta
from dde.store.states import DeliveryState

ENDPOINT = EndpointSettings.model_validate(
    {"name": "WEB1", "kind": "dicomweb", "url": "http://pacs.example/dicom-web"})
POLICY = RetryPolicy(max_attempts=3, base=0.02, cap=0.05)


def queue_study(ledger: Ledger, spool: Spool, study_uid: str, count: int) -> dict[str, int]:
    """Spool and commit ``count`` instances of one study for WEB1: {SOP UID: instance id}."""
    ids = {}
    for _ in range(count):
        instance = generated(study_uid)
        written = spool.write(encode_file_meta(instance.sop_class_uid,
                                               instance.sop_instance_uid,
                                               instance.transfer_syntax_uid), instance.dataset)
        ids[instance.sop_instance_uid] = ingest_to(
            ledger, ["WEB1"], spool_path=written.relative_path,
            sop_instance_uid=instance.sop_instance_uid, study_instance_uid=study_uid)
    return ids


def start(workers: list[EndpointWorker], ledger: Ledger, spool: Spool,
          server: StowServer) -> None:
    sender = DicomWebSender(ENDPOINT, DeliverySettings(), server.transport)
    worker = EndpointWorker(ENDPOINT, ledger, spool, sender, POLICY, LoadBook(60.0),
                            batch_size=64, idle_release=0.05, poll=0.05)
    workers.append(worker)
    worker.start()


def row(ledger: Ledger, instance_id: int) -> tuple[Any, ...]:
    return delivery_rows(ledger, instance_id)["WEB1"]


def test_each_study_goes_in_one_request_and_a_refusal_fails_only_its_instance(
        ledger: Ledger, spool: Spool, workers: list[EndpointWorker]) -> None:
    first = queue_study(ledger, spool, "1.2.3.1", 3)
    second = queue_study(ledger, spool, "1.2.3.2", 2)
    refused = next(iter(second))
    server = StowServer(lambda request, sent: httpx.Response(
        202 if refused in sent else 200,
        json=stow_answer([u for u in sent if u != refused],
                         {refused: SOP_CLASS_NOT_SUPPORTED} if refused in sent else None)))

    start(workers, ledger, spool, server)
    everything = {**first, **second}
    wait_until(lambda: all(row(ledger, i)[1] != DeliveryState.PENDING.value
                           for i in everything.values()), 10.0, "all settled")

    assert sorted(map(sorted, server.request_uids())) == sorted(
        [sorted(first), sorted(second)])
    for uid, instance_id in everything.items():
        _, state, attempts, error, _ = row(ledger, instance_id)
        if uid == refused:
            assert (state, attempts) == ("failed", 1)
            assert error == "STOW-RS failure 0x0122 (SOP class not supported)"
        else:
            assert (state, error) == ("delivered", None)


def test_a_throttle_defers_the_batch_without_spending_attempts(
        ledger: Ledger, spool: Spool, workers: list[EndpointWorker]) -> None:
    first = queue_study(ledger, spool, "1.2.3.1", 2)
    second = queue_study(ledger, spool, "1.2.3.2", 2)
    server = StowServer(lambda request, sent: httpx.Response(429, headers={"Retry-After": "30"}))

    before = time.time()
    start(workers, ledger, spool, server)
    everything = [*first.values(), *second.values()]
    wait_until(lambda: all(row(ledger, i)[3] is not None for i in everything), 10.0,
               "all deferred")

    assert len(server.requests) == 1  # the second study was not sent into the throttle
    for instance_id in everything:
        _, state, attempts, error, next_attempt_at = row(ledger, instance_id)
        assert (state, attempts) == ("pending", 0)
        assert error == "HTTP 429: throttled"
        assert next_attempt_at >= before + 30
