"""The main process, wired: health/loads → core (config, ledger, spool, router, ingest) →
dispatcher → receiver → web, plus the background loops that keep them live (config reload,
status, failover)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from dde.config import DeliverySettings, EndpointKind, EndpointSettings, Home, Settings
from dde.config_store import ConfigStore
from dde.delivery.commitment import CommitmentRecorder
from dde.delivery.dispatcher import Dispatcher
from dde.delivery.failover import fail_over_once
from dde.delivery.retry import RetryPolicy
from dde.dicom.commitment import CommitmentReport
from dde.endpoints.dicom_sender import DicomSender
from dde.endpoints.dicomweb_sender import DicomWebSender
from dde.endpoints.health import HealthMonitor
from dde.endpoints.load import LoadBook
from dde.endpoints.orthanc_sender import OrthancRestSender
from dde.endpoints.sending import Sender
from dde.receiving.notify import NotificationListener, channel_name
from dde.receiving.pool import ReceiverPool
from dde.receiving.receivers import Receivers
from dde.routing.rules import RuleSet
from dde.runtime.core import RouterCore
from dde.store.errors import LedgerError
from dde.store.status_board import PublishedStatus
from dde.telemetry import NULL_TELEMETRY, Telemetry
from dde.web.auth import Authenticator, load_token
from dde.web.metrics import WebMetrics
from dde.web.server import WebServer, build_app

log = logging.getLogger(__name__)

CONFIG_POLL_SECONDS = 0.5
FIRST_PROBES_WAIT_SECONDS = 2.0


def _retry_policy(delivery: DeliverySettings) -> RetryPolicy:
    return RetryPolicy(delivery.max_attempts, delivery.backoff_base_seconds,
                       delivery.backoff_cap_seconds)


def _dispatch_options(settings: Settings) -> dict[str, Any]:
    delivery = settings.delivery
    return {"batch_size": delivery.batch_size, "idle_release": delivery.idle_release_seconds,
            "poll": delivery.poll_seconds, "retention": settings.spool.retention_seconds,
            "nice": delivery.nice, "associations": delivery.associations,
            "commitment_timeout": delivery.commitment_timeout_seconds}


class RouterApp:
    """The main process: the shared core, plus delivery, probes, loads, the receiver (in
    processes or in this one) and the web server, and the loops that keep them live."""

    def __init__(self, home: Home, settings: Settings, config_file: Path | None = None,
                 ruleset: RuleSet | None = None, verbose: bool = False) -> None:
        self.home = home
        home.ensure()
        self.store = ConfigStore(home, config_file)
        if ruleset is None:
            ruleset = self.store.ruleset(settings)
        self.metrics: WebMetrics | None = WebMetrics() if settings.web.enabled else None
        telemetry: Telemetry = self.metrics or NULL_TELEMETRY
        self._api_token = load_token(home) if settings.web.enabled else None
        self.loads = LoadBook(settings.routing.load_refresh_seconds)
        self.loads.set_endpoints(settings.endpoints)
        self.health = HealthMonitor(settings.health, settings.receiver.ae_title)
        self.health.configure(settings.health, settings.endpoints)
        self.core = RouterCore(self.store, settings, ruleset, health=self.health,
                               loads=self.loads, on_committed=self._committed,
                               telemetry=telemetry,
                               shared_spool=settings.receiver.processes > 0)
        self.ledger = self.core.ledger
        self.spool = self.core.spool
        self.router = self.core.router
        self.pipeline = self.core.pipeline
        self.dispatcher = Dispatcher(
            self.ledger, self.spool, _retry_policy(settings.delivery), self.loads,
            self._sender_for, **_dispatch_options(settings), health=self.health,
            telemetry=telemetry, node=self.core.node, lease=settings.delivery.lease_seconds,
        )
        self.core.listeners.append(self._apply_here)
        self.health.listeners.append(self.dispatcher.endpoint_health_changed)
        self.health.status_listeners.append(self._publish_on_change)
        self.receiver: Receivers | ReceiverPool
        """Every receiver (``receiver:`` and ``receivers:``), in processes or in this one."""
        self._notes: NotificationListener | None = None
        if settings.receiver.processes:
            self._notes = NotificationListener(channel_name(), self.dispatcher.wake, telemetry)
            self.receiver = ReceiverPool(settings.receiving_aes(), settings.receiver.processes,
                                         home.root, config_file, self._notes.name, verbose)
        else:
            self.receiver = Receivers(settings.receiving_aes(), self.pipeline,
                                      prepared=self.spool.prepared,
                                      on_commitment_report=self._commitment_report)
        self.web: WebServer | None = None
        self._stopped = threading.Event()
        self._loops: list[threading.Thread] = []

    @property
    def settings(self) -> Settings:
        """The settings the router runs with now."""
        return self.core.settings

    def _committed(self, destinations: Iterable[str]) -> None:
        self.dispatcher.wake(destinations)

    def _sender_for(self, endpoint: EndpointSettings) -> Sender:
        if endpoint.kind is EndpointKind.ORTHANC_REST:
            return OrthancRestSender(endpoint, self.settings.delivery)
        if endpoint.kind is EndpointKind.DICOMWEB:
            return DicomWebSender(endpoint, self.settings.delivery)
        capabilities, name = self.ledger.capabilities, endpoint.name
        return DicomSender(endpoint, self.settings.delivery, self.settings.receiver.ae_title,
                           scratch=self.spool.incoming_dir,
                           on_learned=lambda pairs: capabilities.learn(name, pairs),
                           on_report=lambda report: self._commitment_report(report,
                                                                            endpoint.aet))

    def _commitment_report(self, report: CommitmentReport, calling_aet: str) -> int:
        recorder = CommitmentRecorder.of(self.ledger, self.settings.delivery)
        return recorder.report(report, calling_aet)

    # -- live configuration ------------------------------------------------------------
    def reload(self) -> bool:
        """Apply the configuration files if they changed; keep the old ones if invalid."""
        return self.core.reload()

    def apply(self, settings: Settings, ruleset: RuleSet) -> None:
        self.core.apply(settings, ruleset)

    def _apply_here(self, previous: Settings, settings: Settings, ruleset: RuleSet) -> None:
        """What only the main process has: loads, probes, delivery workers."""
        self.loads.set_endpoints(settings.endpoints)
        self.health.configure(settings.health, settings.endpoints)
        if (settings.delivery != previous.delivery
                or settings.spool.retention_seconds != previous.spool.retention_seconds):
            self.dispatcher.reconfigure(_retry_policy(settings.delivery),
                                        **_dispatch_options(settings))
        if self.dispatcher.started:  # before start(), start() takes the endpoints in force
            self.dispatcher.sync(settings.endpoints)
        before = {e.name for e in previous.endpoints}
        current = {e.name for e in settings.endpoints}
        log.info("configuration applied: %d endpoints (added: %s; removed: %s), %d rules",
                 len(current), ", ".join(sorted(current - before)) or "none",
                 ", ".join(sorted(before - current)) or "none", len(ruleset.rules))

    def publish_status(self) -> None:
        snapshot = self.health.snapshot()
        loads = self.loads.snapshot()
        rows = []
        for endpoint in self.settings.endpoints:
            entry = snapshot.get(endpoint.name, {})
            stored = loads.get(endpoint.name, {}).get("stored")
            rows.append(PublishedStatus(
                endpoint.name, str(entry.get("health", "unknown")),
                str(entry.get("breaker", "closed")), entry.get("down_since"),
                entry.get("last_error"), int(stored) if isinstance(stored, int) else None))
        self.ledger.status_board.publish(rows)

    def _publish_on_change(self, name: str, health: str) -> None:
        """Receiver processes route with the published picture: a change (down, up again,
        unknown → up after the first probe) goes out now."""
        try:
            self.publish_status()
        except LedgerError as exc:
            log.warning("could not publish the endpoint status: %s", exc)
        except Exception:
            log.exception("could not publish the endpoint status")

    def _loop(self, name: str, interval: float, step: object) -> None:
        def run() -> None:
            while not self._stopped.wait(interval):
                try:
                    step()  # type: ignore[operator]
                except LedgerError as exc:  # the ledger unreachable for now: no traceback
                    log.warning("%s failed: %s; will retry", name, exc)
                except Exception:
                    log.exception("%s failed; will retry", name)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._loops.append(thread)

    def _housekeeping(self) -> None:
        self.publish_status()
        fail_over_once(self.ledger, self.health, self.router)

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        removed = self.spool.discard_partials()
        if removed:
            log.info("removed %d partial spool file(s) left by an interrupted write", removed)
        unrecorded = self.spool.sweep_unrecorded(self.ledger.spool_index.spool_paths_in_use())
        if unrecorded:
            log.info("removed %d spool file(s) without a ledger row (prepared and unused, "
                     "or never acknowledged)", unrecorded)
        self.loads.start()
        self.health.start()
        # New studies go to members known up; before the first probes every one is unknown
        # (then a group falls back to its unknown members). A short wait avoids that.
        self.health.wait_first_round(FIRST_PROBES_WAIT_SECONDS)
        self.dispatcher.start(self.settings.endpoints)
        pending = sum(self.ledger.queue.queued_counts().values())
        if pending:
            log.info("resuming %d pending deliveries", pending)
        self.publish_status()  # receiver processes route with what is published
        if self._notes is not None:
            self._notes.start()
        self.receiver.start()
        if self.metrics is not None and self._api_token is not None:
            app = build_app(self, self.metrics, Authenticator(self._api_token),
                            self.settings.web)
            self.web = WebServer(self.settings.web, app)
            self.web.start()
        self._loop("config-watch", CONFIG_POLL_SECONDS, self.reload)
        self._loop("housekeeping", min(1.0, self.settings.health.interval_seconds),
                   self._housekeeping)
        if self.settings.reconcile.interval_seconds > 0:
            self._loop("reconcile", self.settings.reconcile.interval_seconds,
                       self._reconcile)

    def _reconcile(self) -> None:
        from dde.reconcile import ReconcileError, reconcile

        try:
            report = reconcile(self.settings, self.router.ruleset, ledger=self.ledger,
                               pipeline=self.pipeline, repair=self.settings.reconcile.repair)
        except ReconcileError as exc:
            log.warning("periodic reconcile failed: %s", exc)
            return
        level = logging.INFO if report.consistent else logging.WARNING
        log.log(level, "reconcile: storage %s, probe %s, missing in probe %s, repaired %d",
                report.storage, report.probe, report.missing_in_probe, report.repaired)

    def stop(self) -> None:
        """Stop accepting, let workers finish the instance in hand, persist, close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping")
        if self.web is not None:
            self.web.stop()
        self.receiver.stop()
        if self._notes is not None:
            self._notes.stop()
        for thread in self._loops:
            thread.join(timeout=10)
        self.dispatcher.stop()
        self.health.stop()
        self.loads.stop()
        self.core.close()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        done = threading.Event()

        def _signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s", signal.Signals(signum).name)
            done.set()

        previous = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            done.wait()
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
