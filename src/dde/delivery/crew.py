"""The crew of one endpoint: ``associations`` workers sharing its queue (each claims its own
deliveries and sends them over its own association), its suspect lane, and a watch that
hands the rest of a batch to the other workers when one C-STORE takes too long.

So one instance the destination is slow to answer (or never answers) holds one association,
not the endpoint's whole queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dde.config import EndpointSettings
from dde.delivery.worker import EndpointWorker
from dde.endpoints.sending import Sender, SendResult, Shipment

log = logging.getLogger(__name__)

HAND_BACK_AFTER_SECONDS = 1.0
"""A C-STORE in flight this long gives the rest of its worker's batch to the other workers."""
WATCH_INTERVAL_SECONDS = 0.25

WorkerMaker = Callable[[int, bool, Sender], EndpointWorker]
"""``(index, suspects, sender) → worker``: how the dispatcher builds one worker."""


class LazySender:
    """A sender made at its first use: the suspect lane opens nothing until it has work."""

    def __init__(self, make: Callable[[], Sender]) -> None:
        self._make = make
        self._sender: Sender | None = None
        self._lock = threading.Lock()

    def _get(self) -> Sender:
        with self._lock:
            if self._sender is None:
                self._sender = self._make()
            return self._sender

    def prepare(self, shipments: list[Shipment]) -> None:
        self._get().prepare(shipments)

    def send(self, shipment: Shipment) -> SendResult:
        return self._get().send(shipment)

    def release(self) -> None:
        sender = self._sender
        if sender is not None:
            sender.release()

    def abort(self) -> None:
        sender = self._sender
        if sender is not None:
            sender.abort()


class EndpointCrew:
    """The workers delivering to one endpoint."""

    def __init__(self, endpoint: EndpointSettings, associations: int,
                 make_sender: Callable[[], Sender], make_worker: WorkerMaker, *,
                 hand_back_after: float = HAND_BACK_AFTER_SECONDS) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.workers = [make_worker(index, False, make_sender())
                        for index in range(associations)]
        self.suspect_lane = make_worker(0, True, LazySender(make_sender))
        self._hand_back_after = hand_back_after
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_run, name=f"deliver-{self.name}-watch",
                                       daemon=True)

    @property
    def all_workers(self) -> list[EndpointWorker]:
        return [*self.workers, self.suspect_lane]

    def start(self) -> None:
        for worker in self.all_workers:
            worker.start()
        if len(self.workers) > 1:
            self._watch.start()

    def wake(self) -> None:
        for worker in self.all_workers:
            worker.wake()

    def recovered(self) -> None:
        for worker in self.all_workers:
            worker.recovered()

    def request_stop(self) -> None:
        self._stop.set()
        for worker in self.all_workers:
            worker.request_stop()

    def stop(self, timeout: float = 30.0, grace: float = 2.0) -> None:
        """Stop every worker after the instance in hand; one grace period for all of them,
        then those a peer still holds are aborted."""
        self.request_stop()
        deadline = time.monotonic() + grace
        for worker in self.all_workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self.all_workers:
            worker.abort_if_busy()
        for worker in self.all_workers:
            worker.join(timeout)
        if self._watch.is_alive():
            self._watch.join(timeout)

    @property
    def alive(self) -> bool:
        return all(worker.alive for worker in self.all_workers)

    @property
    def consecutive_unreachable(self) -> int:
        return max(worker.consecutive_unreachable for worker in self.all_workers)

    def _watch_run(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_SECONDS):
            try:
                handed = [w for w in self.workers if w.hand_back_if_stuck(self._hand_back_after)]
            except Exception:  # the watch must never end delivery
                log.exception("delivery watch of %s failed", self.name)
                continue
            if handed:
                for worker in self.workers:
                    if worker not in handed:
                        worker.wake()
