"""Wiring only: config → ledger/spool → loads → router → dispatcher → receiver."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from dde.config import EndpointKind, EndpointSettings, Home, Settings
from dde.delivery.dispatcher import Dispatcher
from dde.delivery.ledger import Ledger
from dde.delivery.retry import RetryPolicy
from dde.endpoints.dicom_sender import DicomSender
from dde.endpoints.load import LoadBook
from dde.endpoints.orthanc_sender import OrthancRestSender
from dde.endpoints.sending import Sender
from dde.receiving.ingest import IngestPipeline
from dde.receiving.scp import StorageSCP
from dde.receiving.spool import Spool
from dde.routing.router import Router

log = logging.getLogger(__name__)


class RouterApp:
    def __init__(self, home: Home, settings: Settings) -> None:
        self.home = home
        self.settings = settings
        home.ensure()
        self.ledger = Ledger(home.database)
        self.spool = Spool(home.spool_dir)
        self.loads = LoadBook(settings.routing.load_refresh_seconds)
        self.loads.set_endpoints(settings.endpoints)
        self.router = Router(settings.routing, settings.endpoints, self.loads)
        delivery = settings.delivery
        self.dispatcher = Dispatcher(
            self.ledger, self.spool,
            RetryPolicy(delivery.max_attempts, delivery.backoff_base_seconds,
                        delivery.backoff_cap_seconds),
            self.loads, self._sender_for, batch_size=delivery.batch_size,
            idle_release=delivery.idle_release_seconds, poll=delivery.poll_seconds,
            retention=settings.spool.retention_seconds,
        )
        self.pipeline = IngestPipeline(self.ledger, self.spool, self.router,
                                       self.dispatcher.wake)
        self.receiver = StorageSCP(settings.receiver, self.pipeline)
        self._stopped = threading.Event()

    def _sender_for(self, endpoint: EndpointSettings) -> Sender:
        if endpoint.kind is EndpointKind.ORTHANC_REST:
            return OrthancRestSender(endpoint, self.settings.delivery)
        return DicomSender(endpoint, self.settings.delivery, self.settings.receiver.ae_title)

    def start(self) -> None:
        removed = self.spool.discard_partials()
        if removed:
            log.info("removed %d partial spool file(s) left by an interrupted write", removed)
        self.loads.start()
        self.dispatcher.start(self.settings.endpoints)
        pending = sum(self.ledger.queued_counts().values())
        if pending:
            log.info("resuming %d pending deliveries", pending)
        self.receiver.start()

    def stop(self) -> None:
        """Stop accepting, let workers finish the instance in hand, persist, close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping")
        self.receiver.stop()
        self.dispatcher.stop()
        self.loads.stop()
        self.ledger.close()
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
