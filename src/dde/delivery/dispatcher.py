"""The dispatcher: one worker thread per destination, fed from the ledger.

A worker takes the due deliveries of its endpoint in batches, sends them over one reused
association (or HTTP connection), and writes all outcomes of the batch in one transaction.
A destination that is down only parks its own worker (backoff on the endpoint, not on each
delivery); the others keep flowing. Sending before recording is at-least-once by design: a
crash between the two re-sends, it never loses.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from dde.config import EndpointSettings, EndpointState
from dde.delivery.retry import RetryPolicy
from dde.endpoints.health import HealthMonitor
from dde.endpoints.load import LoadBook
from dde.endpoints.sending import Sender, SendStatus, Shipment
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome, QueuedDelivery
from dde.store.spool import Spool
from dde.store.states import DeliveryState
from dde.telemetry import NULL_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

SenderFactory = Callable[[EndpointSettings], Sender]
JANITOR_OVERLAP_SECONDS = 30.0
JANITOR_MIN_INTERVAL_SECONDS = 0.5


def lower_thread_priority(increment: int) -> None:
    """Lower the calling thread's CPU priority by ``increment`` nice steps (Linux schedules
    threads one by one): deliveries yield the CPU to acknowledging, and catch up when the
    senders pause. Never raises; 0 leaves the priority as it is."""
    if increment <= 0:
        return
    try:
        thread = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + increment))
    except OSError as exc:
        log.debug("delivery priority unchanged: %s", exc)


class EndpointWorker:
    def __init__(self, endpoint: EndpointSettings, ledger: Ledger, spool: Spool, sender: Sender,
                 policy: RetryPolicy, loads: LoadBook, *, batch_size: int,
                 idle_release: float, poll: float,
                 on_delivered: Callable[[], None] | None = None,
                 health: HealthMonitor | None = None,
                 telemetry: Telemetry = NULL_TELEMETRY, nice: int = 0) -> None:
        self.endpoint = endpoint
        self._nice = nice
        self._health = health
        self._telemetry = telemetry
        self.name = endpoint.name
        self._ledger = ledger
        self._spool = spool
        self._sender = sender
        self._policy = policy
        self._loads = loads
        self._batch_size = batch_size
        self._idle_release = idle_release
        self._poll = poll
        self._on_delivered = on_delivered
        self._wake = threading.Event()
        self._recovered = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"deliver-{self.name}",
                                        daemon=True)
        self.consecutive_unreachable = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def recovered(self) -> None:
        """The endpoint answers again: end the backoff now."""
        self._recovered.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._recovered.set()

    def stop(self, timeout: float = 30.0, grace: float = 2.0) -> None:
        """Stop after the instance in hand; a peer holding it longer than ``grace`` seconds
        is aborted (that delivery stays pending and is sent again after the restart)."""
        self.request_stop()
        self._thread.join(grace)
        if self._thread.is_alive():
            log.warning("aborting the delivery in progress to %s to stop", self.name)
            abort = getattr(self._sender, "abort", None)
            if abort is not None:
                abort()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        lower_thread_priority(self._nice)
        idle_since: float | None = None
        while not self._stop.is_set():
            try:
                worked = self._one_batch()
            except Exception:  # a bug must not kill delivery for good: log, back off, retry
                log.exception("delivery worker for %s failed; retrying", self.name)
                self._sender.release()
                self._stop.wait(self._policy.backoff(1))
                continue
            if worked:
                idle_since = None
                continue
            now = time.time()
            if idle_since is None:
                idle_since = now
            elif now - idle_since >= self._idle_release:
                self._sender.release()
            next_due = self._ledger.queue.next_due_at(self.name)
            timeout = self._poll if next_due is None else min(self._poll, max(0.0, next_due - now))
            if idle_since is not None and now - idle_since < self._idle_release:
                timeout = min(timeout, self._idle_release)
            self._wake.wait(timeout)
            self._wake.clear()
        self._sender.release()

    def _one_batch(self) -> bool:
        batch = self._ledger.queue.due(self.name, time.time(), self._batch_size)
        if not batch:
            return False
        shipments = {item.id: self._shipment(item) for item in batch}
        self._sender.prepare([s for s in shipments.values() if s is not None])
        outcomes: list[DeliveryOutcome] = []
        unreachable: str | None = None
        delivered = 0
        received_at = {item.id: item.received_at for item in batch}
        for item in batch:
            if self._stop.is_set():
                break
            shipment = shipments[item.id]
            if shipment is None:
                outcomes.append(DeliveryOutcome(item.id, DeliveryState.FAILED,
                                                "spool file is missing"))
                continue
            result = self._sender.send(shipment)
            if self._health is not None:
                self._health.report(self.name, result.status is not SendStatus.UNREACHABLE,
                                    result.detail)
            if result.status is SendStatus.DELIVERED:
                outcomes.append(DeliveryOutcome(item.id, DeliveryState.DELIVERED, None))
                delivered += 1
                log.info("delivered instance #%d to %s (attempt %d)", item.instance_id,
                         self.name, item.attempts + 1)
            elif result.status is SendStatus.UNREACHABLE:
                unreachable = result.detail
                self._ledger.queue.note_endpoint_error(self.name, result.detail)
                break
            else:
                outcomes.append(self._refused(item, result.detail, result.permanent))
        self._ledger.queue.record_outcomes(outcomes)
        self._report(outcomes, received_at)
        if delivered:
            self._loads.note_delivered(self.name, delivered)
            if self._on_delivered is not None:
                self._on_delivered()
        if unreachable is not None:
            self.consecutive_unreachable += 1
            self.last_error = unreachable
            delay = self._policy.backoff(self.consecutive_unreachable)
            log.warning("%s unreachable (%s); next try in %.1f s", self.name, unreachable, delay)
            self._sender.release()
            self._recovered.wait(delay)
            self._recovered.clear()
            return True
        if self.consecutive_unreachable:
            log.info("%s reachable again", self.name)
        self.consecutive_unreachable = 0
        self.last_error = None
        return bool(outcomes)

    def _report(self, outcomes: list[DeliveryOutcome],
                received_at: dict[int, float | None]) -> None:
        now = time.time()
        try:
            for outcome in outcomes:
                if outcome.state is DeliveryState.DELIVERED:
                    since = received_at.get(outcome.delivery_id)
                    self._telemetry.delivery_succeeded(
                        self.name, max(0.0, now - since) if since is not None else None)
                elif outcome.state is DeliveryState.FAILED:
                    self._telemetry.delivery_failed(self.name)
        except Exception:  # metrics must never stop delivery
            log.exception("telemetry failed")

    def _refused(self, item: QueuedDelivery, detail: str, permanent: bool) -> DeliveryOutcome:
        attempts = item.attempts + 1
        decision = self._policy.after_failure(attempts, permanent=permanent)
        if decision.give_up:
            log.warning("delivery of instance #%d to %s failed after %d attempt(s): %s",
                        item.instance_id, self.name, attempts, detail)
            return DeliveryOutcome(item.id, DeliveryState.FAILED, detail)
        log.info("delivery of instance #%d to %s refused (attempt %d), retry in %.1f s: %s",
                 item.instance_id, self.name, attempts, decision.delay, detail)
        return DeliveryOutcome(item.id, DeliveryState.PENDING, detail,
                               next_attempt_at=time.time() + decision.delay)

    def _shipment(self, item: QueuedDelivery) -> Shipment | None:
        if item.spool_path is None:
            return None
        path = self._spool.path_of(item.spool_path)
        if not path.exists():
            return None
        return Shipment(path, item.sop_class_uid, item.sop_instance_uid,
                        item.transfer_syntax_uid)


def _delivery_key(endpoint: EndpointSettings) -> object:
    """What a worker's sender depends on; a change elsewhere (state, weight, groups) keeps
    the worker and its association."""
    return endpoint.model_dump(exclude={"state", "weight", "groups"})


class Dispatcher:
    """Owns the workers (one per endpoint) and the spool janitor."""

    def __init__(self, ledger: Ledger, spool: Spool, policy: RetryPolicy, loads: LoadBook,
                 sender_factory: SenderFactory, *, batch_size: int, idle_release: float,
                 poll: float, retention: float, health: HealthMonitor | None = None,
                 telemetry: Telemetry = NULL_TELEMETRY, nice: int = 0) -> None:
        """``nice``: how much lower the workers' CPU priority is than the receiver's."""
        self._nice = nice
        self._health = health
        self._telemetry = telemetry
        self._ledger = ledger
        self._spool = spool
        self._policy = policy
        self._loads = loads
        self._sender_factory = sender_factory
        self._batch_size = batch_size
        self._idle_release = idle_release
        self._poll = poll
        self._retention = retention
        self._workers: dict[str, EndpointWorker] = {}
        self._cleaned_until: float | None = None  # None: look at every spooled instance
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._janitor_wake = threading.Event()
        self._stop = threading.Event()
        self._janitor = threading.Thread(target=self._janitor_run, name="spool-janitor",
                                         daemon=True)

    def start(self, endpoints: Iterable[EndpointSettings]) -> None:
        self.sync(endpoints)
        self._janitor.start()

    def reconfigure(self, policy: RetryPolicy, *, batch_size: int, idle_release: float,
                    poll: float, retention: float, nice: int) -> None:
        """New delivery settings: every worker is started again with them at the next
        :meth:`sync` (their associations are released in order first)."""
        with self._sync_lock:
            with self._lock:
                self._policy, self._batch_size = policy, batch_size
                self._idle_release, self._poll = idle_release, poll
                self._retention, self._nice = retention, nice
                stale = list(self._workers.values())
                self._workers.clear()
            for worker in stale:
                worker.stop()
        self._janitor_wake.set()

    def sync(self, endpoints: Iterable[EndpointSettings]) -> None:
        """Start workers for new endpoints, restart changed ones, stop removed ones.

        A disabled endpoint has no worker: its queue waits until it is enabled again.
        """
        wanted = {e.name: e for e in endpoints if e.state is not EndpointState.DISABLED}
        with self._sync_lock:
            with self._lock:
                stale = [self._workers.pop(name) for name, worker in list(self._workers.items())
                         if name not in wanted
                         or _delivery_key(wanted[name]) != _delivery_key(worker.endpoint)]
            for worker in stale:  # outside _lock: wake() on the receive path never waits
                worker.stop()
            self._start_missing(wanted)

    def _start_missing(self, wanted: dict[str, EndpointSettings]) -> None:
        with self._lock:
            for name, endpoint in wanted.items():
                if name not in self._workers:
                    worker = EndpointWorker(
                        endpoint, self._ledger, self._spool, self._sender_factory(endpoint),
                        self._policy, self._loads, batch_size=self._batch_size,
                        idle_release=self._idle_release, poll=self._poll,
                        on_delivered=self._janitor_wake.set, health=self._health,
                        telemetry=self._telemetry, nice=self._nice,
                    )
                    self._workers[name] = worker
                    worker.start()

    def wake(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                worker = self._workers.get(name)
                if worker is not None:
                    worker.wake()

    def endpoint_health_changed(self, name: str, up: bool) -> None:
        if up:
            with self._lock:
                worker = self._workers.get(name)
            if worker is not None:
                worker.recovered()

    def workers(self) -> dict[str, EndpointWorker]:
        with self._lock:
            return dict(self._workers)

    def stop(self) -> None:
        self._stop.set()
        self._janitor_wake.set()
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            worker.stop()
        if self._janitor.is_alive():
            self._janitor.join(timeout=10)

    def clean_spool_once(self) -> int:
        """Remove up to one batch of spool files no delivery needs any more; how many."""
        older_than = time.time() - self._retention
        removable = self._ledger.spool_index.releasable_spool_files(
            older_than, since=self._cleaned_until)
        if not removable:
            # Everything up to ``older_than`` was looked at: next time only what changed
            # since (less a margin for delivery batches committed a little late).
            self._cleaned_until = older_than - JANITOR_OVERLAP_SECONDS
            return 0
        self._ledger.spool_index.mark_spool_removed([instance_id for instance_id, _ in removable])
        for _, path in removable:
            self._spool.remove(path)
        return len(removable)

    def _janitor_run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.clean_spool_once():
                    pass
            except Exception:
                log.exception("spool clean-up failed; will retry")
            if self._stop.wait(JANITOR_MIN_INTERVAL_SECONDS):  # deliveries wake it often
                return
            self._janitor_wake.wait(max(1.0, min(self._retention, 60.0)))
            self._janitor_wake.clear()
