"""One delivery worker: a thread that claims due deliveries of its endpoint from the ledger,
sends them over its own association (or HTTP connection) and records the outcomes.

A batch is claimed (a lease in the ledger: the endpoint's other workers take other
deliveries), sent in order over one reused association (or, to a sender that bundles — STOW-RS
— study by study, one request per bundle), and its outcomes are written in one
transaction. A destination that asks to wait (HTTP 429) defers the rest of the batch, no
attempt spent. A destination that cannot be reached parks this worker (backoff on the
endpoint, no attempt spent). A C-STORE that gets no answer makes its delivery *suspect*:
the stuck association is dropped, the rest of the batch goes on at once over a fresh one,
and the suspect delivery is from then on sent only by the endpoint's suspect lane (a worker
with ``suspects=True``: one delivery at a time, each on an association of its own, on the
delivery's own backoff). Sending before recording is at-least-once by design. To an
endpoint with ``storage_commitment``, the delivered ones are then asked to be committed,
study by study (:mod:`dde.delivery.commitment`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from dde.config import DeliverySettings, EndpointSettings
from dde.delivery import commitment
from dde.delivery.retry import RetryPolicy
from dde.dicom.uids import uid_name
from dde.endpoints.health import HealthMonitor
from dde.endpoints.load import LoadBook
from dde.endpoints.sending import (
    BundleSender,
    CommitmentRequester,
    Sender,
    SendResult,
    SendStatus,
    Shipment,
)
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.records import DeliveryOutcome, QueuedDelivery
from dde.store.spool import Spool
from dde.store.states import DeliveryState
from dde.telemetry import NULL_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

LEASE_SECONDS: float = DeliverySettings.model_fields["lease_seconds"].default
"""How long a claim holds a delivery for its worker (renewed while the batch lasts): the
default of ``delivery.lease_seconds``, one figure for both; a crashed worker's claims are
also cleared when the dispatcher starts."""


GATHER_SECONDS = 0.02
"""A worker woken by new work waits this long before claiming: what arrives meanwhile goes
in the same claim and the same outcome commit (fewer ledger writes competing with the
receiver's commits), at the cost of 20 ms on an idle destination."""


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
                 telemetry: Telemetry = NULL_TELEMETRY, nice: int = 0,
                 suspects: bool = False, index: int = 0,
                 lease: float = LEASE_SECONDS, gather: float = GATHER_SECONDS,
                 node: str = "") -> None:
        """``suspects``: this worker is the endpoint's suspect lane. ``index`` tells the
        workers of one endpoint apart (thread names, logs). ``node``: the router node's
        name, the first part of this worker's claim owner (nodes sharing a ledger)."""
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
        self._suspects = suspects
        self._lease = lease
        self._gather = gather
        self.owner = (f"{node + '/' if node else ''}{self.name}/"
                      f"{'suspects' if suspects else index + 1}/{uuid.uuid4().hex}")
        self._wake = threading.Event()
        self._recovered = threading.Event()
        self._stop = threading.Event()
        lane = "suspects" if suspects else str(index + 1)
        self._thread = threading.Thread(target=self._run, name=f"deliver-{self.name}-{lane}",
                                        daemon=True)
        self._state_lock = threading.Lock()
        self._rest: list[int] = []
        """Claimed deliveries of the batch in hand not yet sent (what a hand-back gives)."""
        self._sending_since: float | None = None
        self._handed_back = False
        self._idle_since: float | None = None
        """When the queue was last found empty (the association is released after a while)."""
        self._claims_owed = False
        """A ledger error left claims this worker could not give back: release them first."""
        self.consecutive_unreachable = 0
        self.last_error: str | None = None
        self._committing = (sender if endpoint.storage_commitment
                            and isinstance(sender, CommitmentRequester) else None)
        """The sender, when deliveries to this endpoint are asked to be committed."""

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
        self.join(grace)
        self.abort_if_busy()
        self.join(timeout)

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def abort_if_busy(self) -> None:
        """Still running (held by the peer): abort the C-STORE in hand."""
        if self._thread.is_alive():
            log.warning("aborting the delivery in progress to %s to stop", self.name)
            abort = getattr(self._sender, "abort", None)
            if abort is not None:
                abort()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def hand_back_if_stuck(self, after: float) -> list[int]:
        """From another thread: when the C-STORE in hand has taken ``after`` seconds or
        more, give up the claims on the rest of the batch (the endpoint's other workers
        take them now) and tell the worker to end the batch after this one. Returns the
        delivery ids handed back."""
        with self._state_lock:
            since = self._sending_since
            if since is None or not self._rest or time.monotonic() - since < after:
                return []
            rest, self._rest = self._rest, []
            self._handed_back = True
        self._ledger.queue.release(self.owner, rest)
        log.info("a C-STORE to %s takes %.1f s; %d deliveries of its batch handed to the "
                 "other associations", self.name, time.monotonic() - since, len(rest))
        return rest

    def _run(self) -> None:
        lower_thread_priority(self._nice)
        while not self._stop.is_set():
            try:
                self._step()
            except LedgerError as exc:  # the ledger is unreachable (its server restarting…)
                log.warning("delivery to %s paused: %s; retrying", self.name, exc)
                self._claims_owed = True  # what it held could not be given back
                self._sender.release()
                self._stop.wait(self._policy.backoff(1))
            except Exception:  # a bug must not kill delivery for good: log, back off, retry
                log.exception("delivery worker for %s failed; retrying", self.name)
                self._sender.release()
                self._stop.wait(self._policy.backoff(1))
        self._sender.release()
        try:
            self._ledger.queue.release(self.owner)
        except Exception:  # the claims expire anyway, and a restart clears them
            log.debug("claims of %s not released", self.owner, exc_info=True)

    def _step(self) -> None:
        """One batch, or one wait for work."""
        if self._claims_owed:  # the ledger is back: free what the failure left claimed
            self._ledger.queue.release(self.owner)
            self._claims_owed = False
        if self._one_batch():
            self._idle_since = None
            return
        now = time.time()
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= self._idle_release:
            self._sender.release()
        queue = self._ledger.queue
        next_due = (queue.next_suspect_due_at(self.name) if self._suspects
                    else queue.next_due_at(self.name))
        # Due but not claimable (held by another worker, or suspect): the poll, or a wake.
        timeout = (self._poll if next_due is None or next_due <= now
                   else min(self._poll, next_due - now))
        if self._idle_since is not None and now - self._idle_since < self._idle_release:
            timeout = min(timeout, self._idle_release)
        woken = self._wake.wait(timeout)
        self._wake.clear()
        if woken and self._gather > 0:
            self._stop.wait(self._gather)

    def _one_batch(self) -> bool:
        now = time.time()
        limit = 1 if self._suspects else self._batch_size
        taken_over: list[int] = []
        batch = self._ledger.queue.claim(self.name, self.owner, now, limit, self._lease,
                                         suspects=self._suspects, taken_over=taken_over)
        if not batch:
            return False
        if taken_over:
            log.warning("%s: %d deliveries claimed after another worker's lease expired "
                        "(its node stopped?): they may reach the destination twice",
                        self.name, len(taken_over))
            self._telemetry.deliveries_taken_over(self.name, len(taken_over))
        settled: set[int] = set()
        try:
            return self._deliver(batch, now + self._lease, settled)
        finally:
            with self._state_lock:
                self._rest, self._sending_since, self._handed_back = [], None, False
            unsent = [item.id for item in batch if item.id not in settled]
            if unsent:
                self._ledger.queue.release(self.owner, unsent)

    def _deliver(self, batch: list[QueuedDelivery], lease_until: float,
                 settled: set[int]) -> bool:
        """Send ``batch``; add to ``settled`` each delivery whose outcome is recorded or whose
        claim is already given back (what :meth:`_one_batch` need not release)."""
        shipments = {item.id: s for item in batch if (s := self._shipment(item)) is not None}
        self._sender.prepare(list(shipments.values()))
        bundles = self._bundles(batch, shipments)
        outcomes: list[DeliveryOutcome] = []
        unreachable: str | None = None
        delivered = 0
        received_at = {item.id: item.received_at for item in batch}
        with self._state_lock:
            self._rest = [item.id for bundle in bundles for item in bundle]
            self._handed_back = False
        for bundle in bundles:
            with self._state_lock:
                if self._stop.is_set() or self._handed_back:
                    break
                self._rest = self._rest[len(bundle):]
                rest = list(self._rest)
            if bundle[0].id not in shipments:
                outcomes.append(DeliveryOutcome(bundle[0].id, DeliveryState.FAILED,
                                                bundle[0].held_back or "spool file is missing"))
                continue
            if time.time() > lease_until - self._lease / 2:
                lease_until = time.time() + self._lease
                self._ledger.queue.renew(self.owner, [*(i.id for i in bundle), *rest],
                                         lease_until)
            results = self._send([shipments[item.id] for item in bundle])
            if self._suspects:
                self._sender.release()  # a suspect is sent alone: its association ends here
            self._report_health(results)
            throttled: list[tuple[QueuedDelivery, SendResult]] = []
            for item, result in zip(bundle, results, strict=True):
                if result.status is SendStatus.DELIVERED:
                    outcomes.append(DeliveryOutcome(
                        item.id, DeliveryState.DELIVERED, None,
                        transfer_syntax_uid=result.transfer_syntax_uid,
                        transcoded_from=result.transcoded_from))
                    delivered += 1
                    self._log_delivered(item, result)
                elif result.status is SendStatus.UNREACHABLE:
                    unreachable = result.detail
                elif result.retry_after is not None:
                    throttled.append((item, result))
                else:
                    outcomes.append(self._refused(item, result.detail, result.permanent,
                                                  result.suspect))
            if unreachable is not None:
                self._ledger.queue.note_endpoint_error(self.name, unreachable)
                break
            if throttled:
                outcomes.extend(self._throttled(throttled))
                break
        commitments = (commitment.plan(self.name, batch, outcomes)
                       if self._committing is not None else [])
        self._ledger.queue.record_outcomes(outcomes, commitments=commitments)
        settled.update(outcome.delivery_id for outcome in outcomes)
        if commitments and self._committing is not None:
            commitment.request(self._committing, commitment.CommitmentRecorder(
                self._ledger, self._policy), commitments)
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
            # the other workers may take the unsent ones during the backoff
            released = [i.id for i in batch if i.id not in settled]
            self._ledger.queue.release(self.owner, released)
            settled.update(released)  # released already: _one_batch has nothing left to do
            self._recovered.wait(delay)
            self._recovered.clear()
            return True
        if self.consecutive_unreachable:
            log.info("%s reachable again", self.name)
        self.consecutive_unreachable = 0
        self.last_error = None
        return bool(outcomes)

    def _bundles(self, batch: list[QueuedDelivery],
                 shipments: dict[int, Shipment]) -> list[list[QueuedDelivery]]:
        """The batch in sending order, as the deliveries sent in one request each: one per
        instance, or as a :class:`BundleSender` groups them (not on the suspect lane).
        Deliveries whose spool file is missing come first, alone."""
        present = [item for item in batch if item.id in shipments]
        missing = [[item] for item in batch if item.id not in shipments]
        if self._suspects or not isinstance(self._sender, BundleSender) or not present:
            return [*missing, *([item] for item in present)]
        plan = self._sender.bundles([shipments[item.id] for item in present])
        return [*missing, *([present[position] for position in bundle] for bundle in plan)]

    def _send(self, bundle: list[Shipment]) -> list[SendResult]:
        with self._state_lock:
            self._sending_since = time.monotonic()
        try:
            if len(bundle) > 1 and isinstance(self._sender, BundleSender):
                return self._sender.send_bundle(bundle)
            return [self._sender.send(bundle[0])]
        finally:
            with self._state_lock:
                self._sending_since = None

    def _report_health(self, results: list[SendResult]) -> None:
        """One health report per request: down if it found no usable connection."""
        if self._health is None or not results:
            return
        failed = [r for r in results if r.status is SendStatus.UNREACHABLE]
        self._health.report(self.name, not failed, (failed or results)[0].detail)

    def _throttled(self, throttled: list[tuple[QueuedDelivery, SendResult]]
                   ) -> list[DeliveryOutcome]:
        """The destination asked us to wait: these deliveries, and the rest of the batch
        not handed to other workers, wait that long, spending no attempt."""
        retry_after = max(result.retry_after or 0.0 for _, result in throttled)
        detail = throttled[0][1].detail
        wait = self._policy.after_throttle(retry_after)
        with self._state_lock:
            later = [] if self._handed_back else list(self._rest)
            self._rest = []
        deferred = [item.id for item, _ in throttled] + later
        log.info("%s asks to wait (%s): %d deliveries deferred %.1f s", self.name, detail,
                 len(deferred), wait)
        not_before = time.time() + wait
        return [DeliveryOutcome(delivery_id, DeliveryState.PENDING, detail,
                                counts_as_attempt=False, next_attempt_at=not_before)
                for delivery_id in deferred]

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

    def _log_delivered(self, item: QueuedDelivery, result: SendResult) -> None:
        if result.transcoded_from:
            log.info("delivered instance #%d to %s (attempt %d), transcoded from %s to %s",
                     item.instance_id, self.name, item.attempts + 1,
                     uid_name(result.transcoded_from), uid_name(result.transfer_syntax_uid or ""))
        else:
            log.info("delivered instance #%d to %s (attempt %d)", item.instance_id, self.name,
                     item.attempts + 1)

    def _refused(self, item: QueuedDelivery, detail: str, permanent: bool,
                 suspect: bool = False) -> DeliveryOutcome:
        attempts = item.attempts + 1
        decision = self._policy.after_failure(attempts, permanent=permanent)
        if decision.give_up:
            log.warning("delivery of instance #%d to %s failed after %d attempt(s): %s",
                        item.instance_id, self.name, attempts, detail)
            return DeliveryOutcome(item.id, DeliveryState.FAILED, detail, suspect=suspect)
        if suspect:
            log.warning("instance #%d to %s (attempt %d): %s; it is retried alone in %.1f s, "
                        "the queue goes on", item.instance_id, self.name, attempts, detail,
                        decision.delay)
        else:
            log.info("delivery of instance #%d to %s refused (attempt %d), retry in %.1f s: "
                     "%s", item.instance_id, self.name, attempts, decision.delay, detail)
        return DeliveryOutcome(item.id, DeliveryState.PENDING, detail,
                               next_attempt_at=time.time() + decision.delay, suspect=suspect)

    def _shipment(self, item: QueuedDelivery) -> Shipment | None:
        if item.spool_path is None or item.held_back is not None:
            return None
        path = self._spool.path_of(item.spool_path)
        if not path.exists():
            return None
        return Shipment(path, item.sop_class_uid, item.sop_instance_uid,
                        item.transfer_syntax_uid, item.study_instance_uid)
