"""The dispatcher: a crew of workers per destination, fed from the ledger, and the spool
janitor.

Each endpoint has ``associations`` workers (its own setting, or ``delivery.associations``):
each claims due deliveries of the endpoint in batches, sends them over its own reused
association (or HTTP connection), and writes all outcomes of the batch in one transaction
(:mod:`dde.delivery.worker`); a suspect lane retries, alone, what the destination never
answered (:mod:`dde.delivery.crew`). A destination that is down only parks its own workers
(backoff on the endpoint, not on each delivery); the others keep flowing. Sending before
recording is at-least-once by design: a crash between the two re-sends, it never loses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from dde.config import EndpointSettings, EndpointState
from dde.delivery.commitment import CommitmentRecorder
from dde.delivery.crew import EndpointCrew
from dde.delivery.retry import RetryPolicy
from dde.delivery.worker import LEASE_SECONDS
from dde.delivery.worker import EndpointWorker as EndpointWorker
from dde.delivery.worker import lower_thread_priority as lower_thread_priority
from dde.endpoints.health import HealthMonitor
from dde.endpoints.load import LoadBook
from dde.endpoints.sending import Sender
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.spool import Spool
from dde.telemetry import NULL_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

SenderFactory = Callable[[EndpointSettings], Sender]
JANITOR_OVERLAP_SECONDS = 30.0
JANITOR_MIN_INTERVAL_SECONDS = 0.5
STOP_GRACE_SECONDS = 2.0
"""On stop, how long a C-STORE in hand may take before it is aborted (it stays pending)."""


def _delivery_key(endpoint: EndpointSettings) -> object:
    """What a worker's sender depends on; a change elsewhere (state, weight, groups) keeps
    the worker and its association."""
    return endpoint.model_dump(exclude={"state", "weight", "groups"})


class Dispatcher:
    """Owns the crews (one per endpoint) and the spool janitor."""

    def __init__(self, ledger: Ledger, spool: Spool, policy: RetryPolicy, loads: LoadBook,
                 sender_factory: SenderFactory, *, batch_size: int, idle_release: float,
                 poll: float, retention: float, health: HealthMonitor | None = None,
                 telemetry: Telemetry = NULL_TELEMETRY, nice: int = 0,
                 associations: int = 1, node: str = "", lease: float = LEASE_SECONDS,
                 commitment_timeout: float = 600.0) -> None:
        """``nice``: how much lower the workers' CPU priority is than the receiver's;
        ``associations``: workers per endpoint unless the endpoint sets its own; ``node``:
        this router's name when several share the ledger (its workers' claims carry it; at
        start only its own are cleared); ``lease``: how long a claim lasts unrenewed;
        ``commitment_timeout``: a storage commitment unreported this long fails (checked
        by the janitor)."""
        self._commitment_timeout = commitment_timeout
        self._node = node
        self._lease = lease
        self._nice = nice
        self._associations = associations
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
        self._workers: dict[str, EndpointCrew] = {}
        self._started = False
        self._cleaned_until: float | None = None  # None: look at every spooled instance
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._janitor_wake = threading.Event()
        self._stop = threading.Event()
        self._janitor = threading.Thread(target=self._janitor_run, name="spool-janitor",
                                         daemon=True)

    @property
    def started(self) -> bool:
        return self._started

    def start(self, endpoints: Iterable[EndpointSettings]) -> None:
        self._started = True
        cleared = (self._ledger.queue.release_claims_of_node(self._node) if self._node
                   else self._ledger.queue.release_all_claims())  # none of ours runs yet
        if cleared:
            log.info("%d delivery claims left by the last run cleared", cleared)
        self.sync(endpoints)
        self._janitor.start()

    def reconfigure(self, policy: RetryPolicy, *, batch_size: int, idle_release: float,
                    poll: float, retention: float, nice: int,
                    associations: int | None = None,
                    commitment_timeout: float | None = None) -> None:
        """New delivery settings: every worker is started again with them at the next
        :meth:`sync` (their associations are released in order first)."""
        with self._sync_lock:
            with self._lock:
                if associations is not None:
                    self._associations = associations
                if commitment_timeout is not None:
                    self._commitment_timeout = commitment_timeout
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
                    crew = self._crew(endpoint)
                    self._workers[name] = crew
                    crew.start()

    def _crew(self, endpoint: EndpointSettings) -> EndpointCrew:
        def make_worker(index: int, suspects: bool, sender: Sender) -> EndpointWorker:
            return EndpointWorker(
                endpoint, self._ledger, self._spool, sender, self._policy, self._loads,
                batch_size=self._batch_size, idle_release=self._idle_release,
                poll=self._poll, on_delivered=self._janitor_wake.set, health=self._health,
                telemetry=self._telemetry, nice=self._nice, suspects=suspects, index=index,
                lease=self._lease, node=self._node,
            )

        def make_sender() -> Sender:
            return self._sender_factory(endpoint)

        return EndpointCrew(endpoint, endpoint.associations or self._associations,
                            make_sender, make_worker)

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

    def workers(self) -> dict[str, EndpointCrew]:
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
        deadline = time.monotonic() + STOP_GRACE_SECONDS  # one grace for every crew
        for worker in workers:
            worker.stop(grace=max(0.0, deadline - time.monotonic()))
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
        instance_ids = [instance_id for instance_id, _ in removable]
        # the edited variants (a rule's set/remove) go with their original
        variants = self._ledger.spool_index.variant_spool_files(instance_ids)
        self._ledger.spool_index.mark_spool_removed(instance_ids)
        for path in [*(path for _, path in removable), *variants]:
            self._spool.remove(path)
        return len(removable)

    def expire_commitments_once(self) -> int:
        """Fail the storage commitments unreported for too long (their deliveries are sent
        again); how many."""
        return CommitmentRecorder(self._ledger, self._policy).expire(
            self._commitment_timeout)

    def _janitor_run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.expire_commitments_once():
                    self.wake(list(self.workers()))
                while self.clean_spool_once():
                    pass
            except LedgerError as exc:
                log.warning("spool clean-up failed: %s; will retry", exc)
            except Exception:
                log.exception("spool clean-up failed; will retry")
            if self._stop.wait(JANITOR_MIN_INTERVAL_SECONDS):  # deliveries wake it often
                return
            self._janitor_wake.wait(max(1.0, min(self._retention, 60.0)))
            self._janitor_wake.clear()
