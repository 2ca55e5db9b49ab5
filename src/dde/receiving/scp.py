"""The DICOM face of the router: the engine's association server answering C-ECHO and
C-STORE as the router's AE.

Every storage SOP class is accepted, also private ones, compressed transfer syntaxes
included. When a context proposes several transfer syntaxes, the receiver's preference picks
one (``receiver.transfer_syntax_preference``: explicit VR little endian, then implicit,
then the sender's order); a context proposing only unknown syntaxes is rejected. Requests
from outside the allow-lists get an A-ASSOCIATE-RJ. Each dataset is written, as it
arrives, into a spool file prepared in advance (or the incoming folder) and handed to the
ingest pipeline when complete; the C-STORE-RSP carries the status the pipeline returns,
with the reason in Error Comment (0000,0902) when it is not success. An exception anywhere
becomes ``OUT_OF_RESOURCES`` at this boundary, never success. Storage commitment reports
(N-EVENT-REPORT) from the PACS the router asked go to ``on_commitment_report`` (the
ledger); without one they are answered "processing failure".
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from dde.config import MAIN_RECEIVER, ReceiverSettings
from dde.dicom import status as dimse
from dde.dicom.commitment import CommitmentReport
from dde.dicom.engine.acceptance import Proposal, Rejection, RejectResult, RejectSource
from dde.dicom.engine.acceptor import (
    AcceptorLimits,
    Peer,
    ReceivedDataset,
    StoreOutcome,
)
from dde.dicom.engine.server import AssociationServer
from dde.receiving.access import check_association, server_tls_context
from dde.receiving.ingest import Incoming, IngestPipeline
from dde.store.errors import LedgerError
from dde.store.prepared_files import PreparedFiles
from dde.store.spool import encode_file_meta

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_CAP = 5.0
"""A connection must send its A-ASSOCIATE-RQ within this many seconds (or ``acse_timeout``
if shorter): bare connections must not hold the receiver."""
STORE_WORKERS = 8
CommitmentHandler = Callable[[CommitmentReport, str], int]


class _Services:
    """What the receiver decides for the engine: admission, file meta, durable store."""

    def __init__(self, settings: ReceiverSettings, pipeline: IngestPipeline,
                 incoming_dir: Path, prepared: PreparedFiles | None,
                 on_association: Callable[[], None] | None, name: str,
                 on_commitment_report: CommitmentHandler | None = None) -> None:
        self.settings = settings
        self.name = name
        self.port = settings.port
        """The bound port (set once listening): what rules see as ``ReceivingPort``."""
        self._on_commitment_report = on_commitment_report
        self.incoming_dir = incoming_dir
        self._prepared = prepared
        self._pipeline = pipeline
        self._on_association = on_association

    def dataset_path(self) -> Path:
        if self._prepared is not None:
            return self._prepared.take()
        return self.incoming_dir / f"{uuid.uuid4().hex}.dcm"

    def admit(self, proposal: Proposal, address: str) -> Rejection | None:
        if self._on_association is not None:
            try:
                self._on_association()
            except LedgerError as exc:  # served with what is known; no traceback
                log.warning("could not refresh the endpoint picture: %s", exc)
            except Exception:  # the association is still served with what is known
                log.exception("could not refresh the configuration for a new association")
        refusal = check_association(self.settings, proposal.calling_aet, proposal.called_aet,
                                    address)
        if refusal is None:
            return None
        log.warning("association refused by %s of receiver %s: calling AE %r, called AE %r, "
                    "from %s (%s)", refusal.rule, self.name, proposal.calling_aet,
                    proposal.called_aet, address, refusal.reason.name.lower().replace("_", " "))
        return Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_USER, int(refusal.reason))

    @staticmethod
    def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                  calling_aet: str) -> bytes:
        return encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid,
                                calling_aet)

    def store(self, received: ReceivedDataset) -> StoreOutcome:
        incoming = Incoming(
            dataset=b"", dataset_file=received.path, stream_error=received.write_error,
            transfer_syntax_uid=received.transfer_syntax_uid,
            sop_class_uid=received.sop_class_uid, sop_instance_uid=received.sop_instance_uid,
            calling_aet=received.peer.calling_aet, called_aet=received.peer.called_aet,
            source_ip=received.peer.address, started=received.started,
            receiver=self.name, receiving_port=self.port)
        result = self._pipeline.ingest(incoming)
        return StoreOutcome(result.status, result.detail)

    def commitment_report(self, report: CommitmentReport, peer: Peer) -> int:
        if self._on_commitment_report is None:
            log.warning("a storage commitment report from %s, and none is awaited here",
                        peer.calling_aet)
            return dimse.PROCESSING_FAILURE
        return self._on_commitment_report(report, peer.calling_aet)


class StorageSCP:
    def __init__(self, settings: ReceiverSettings, pipeline: IngestPipeline, *,
                 shared_port: bool = False, incoming_dir: Path | None = None,
                 prepared: PreparedFiles | None = None,
                 on_association: Callable[[], None] | None = None,
                 name: str = MAIN_RECEIVER,
                 on_commitment_report: CommitmentHandler | None = None) -> None:
        """``name``: the receiver's (``main``, or a ``receivers:`` entry's): what it takes
        is routed by its rules. ``shared_port``: listen with ``SO_REUSEPORT`` beside other
        receiver processes.
        ``prepared``: the spool's prepared files, which datasets are written into as they
        arrive (started and stopped with the receiver; its fallback is the spool's incoming
        folder). Without it, ``incoming_dir`` (default: a private temporary folder) gets a
        new file per dataset. ``on_association``: called as each association is requested, before
        anything else (a receiver process brings its configuration and endpoint picture
        up to date). ``on_commitment_report``: takes a storage commitment report (and the
        calling AE title), returns the status to answer."""
        self.settings = settings
        self.name = name
        self._on_commitment_report = on_commitment_report
        self._pipeline = pipeline
        self._shared_port = shared_port
        self._prepared = prepared
        self._incoming_dir = prepared.fallback if prepared is not None else incoming_dir
        self._own_incoming: Path | None = None
        self._on_association = on_association
        self._server: AssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            return self.settings.port
        return self._server.bound_port

    @property
    def running(self) -> bool:
        """Whether the receiver is listening (between ``start`` and ``stop``)."""
        return self._server is not None

    def start(self) -> None:
        settings = self.settings
        incoming = self._incoming_dir
        if incoming is None:
            incoming = self._own_incoming = Path(tempfile.mkdtemp(prefix="dde-incoming-"))
        incoming.mkdir(parents=True, exist_ok=True)
        preferred, sender_rest = settings.transfer_syntax_order()
        limits = AcceptorLimits(
            max_pdu=settings.max_pdu_size,
            request_timeout=min(settings.acse_timeout, REQUEST_TIMEOUT_CAP),
            network_timeout=settings.network_timeout,
            preferred_syntaxes=tuple(preferred), sender_rest=sender_rest)
        services = _Services(settings, self._pipeline, incoming, self._prepared,
                             self._on_association, self.name, self._on_commitment_report)
        server = AssociationServer(
            settings.host, settings.port, services, limits,
            max_associations=settings.max_associations,
            max_per_source=max(1, int(settings.max_associations
                                      * settings.max_share_per_source)),
            tls=server_tls_context(settings.tls),
            reuse_port=self._shared_port, workers=min(STORE_WORKERS, settings.max_associations),
            name=f"receiver-{self.name}")
        if self._prepared is not None:
            self._prepared.start()
        server.start()
        self._server = server
        services.port = server.bound_port
        if not self._shared_port:  # a receiver process: the pool says it for all of them
            log.info("receiving as %s on %s:%d%s (receiver %s)", settings.ae_title,
                     settings.host, self.port, " (TLS)" if settings.tls.enabled else "",
                     self.name)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        if self._prepared is not None:
            self._prepared.stop()
        own, self._own_incoming = self._own_incoming, None
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)
