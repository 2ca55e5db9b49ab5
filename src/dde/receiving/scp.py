"""The DICOM face of the router: a pynetdicom AE answering C-ECHO and C-STORE.

Every storage SOP class is accepted, also ones pynetdicom does not know
(``UNRESTRICTED_STORAGE_SERVICE``), compressed transfer syntaxes included. When a context
proposes several transfer syntaxes, the receiver's preference picks one
(``receiver.transfer_syntax_preference``: explicit VR little endian, then implicit, then
the sender's order); a context proposing only unknown syntaxes is rejected. The C-STORE
handler hands the encoded dataset to the ingest pipeline and answers the status it returns,
with the reason in Error Comment (0000,0902) when it is not success; an exception anywhere
becomes ``OUT_OF_RESOURCES`` at this boundary, never success.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from socketserver import TCPServer
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    _NON_PATIENT_OBJECT_CLASSES,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dde.config import ReceiverSettings
from dde.dicom import pynetdicom_adapter
from dde.dicom import status as dimse
from dde.dicom.pynetdicom_adapter import (
    MISSING_UID,
    end_aborted_soon,
    limit_pdu_sizes,
    on_connection_open,
    write_failure,
)
from dde.dicom.transfer_syntaxes import order_proposed_contexts
from dde.receiving.access import (
    REJECTED_PERMANENT,
    SOURCE_SERVICE_USER,
    check_association,
    server_tls_context,
)
from dde.receiving.ingest import Incoming, IngestPipeline

log = logging.getLogger(__name__)

ALL_TRANSFER_SYNTAXES = [str(uid) for uid in AllTransferSyntaxes]


def acceptor_order(preferred: list[str]) -> list[str]:
    """The syntaxes offered for the storage classes pynetdicom negotiates itself (it takes
    the first of this list the sender proposed): the preferred ones first."""
    return list(dict.fromkeys([*preferred, *ALL_TRANSFER_SYNTAXES]))


def store_response(status: int, detail: str) -> int | Dataset:
    """The C-STORE-RSP status, with ``detail`` as Error Comment unless it is success."""
    if status == dimse.SUCCESS:
        return status
    response = Dataset()
    response.Status = status
    comment = dimse.error_comment(detail)
    if comment:
        response.ErrorComment = comment
    return response


class SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's server on a port that several receiver processes listen on
    (``SO_REUSEPORT``: the kernel spreads new connections over them)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def shutdown(self) -> None:
        TCPServer.shutdown(self)
        self.server_close()


class StorageSCP:
    def __init__(self, settings: ReceiverSettings, pipeline: IngestPipeline, *,
                 shared_port: bool = False, streamed: bool = False,
                 on_association: Callable[[], None] | None = None) -> None:
        """``shared_port``: listen with ``SO_REUSEPORT`` beside other receiver processes.
        ``streamed``: let pynetdicom write each dataset to a file as it arrives (in the
        spool's incoming folder) instead of holding it in memory; the caller sets that up
        for the whole process with :func:`dde.dicom.pynetdicom_adapter.install` (``stream_to``).
        ``on_association``: called as each association is requested, before anything else
        (a receiver process brings its configuration and endpoint picture up to date)."""
        self._on_association = on_association
        self.settings = settings
        self._pipeline = pipeline
        self._shared_port = shared_port
        self._streamed = streamed
        self._server: Any = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        """Whether the receiver is listening (between ``start`` and ``stop``)."""
        return self._server is not None

    def start(self) -> None:
        pynetdicom_adapter.install()
        ae = AE(ae_title=self.settings.ae_title)
        ae.add_supported_context(Verification)
        # Storage classes pynetdicom files outside the storage service (colour palettes,
        # hanging protocols, implant templates, …) are not covered by the unrestricted mode.
        preferred, sender_rest = self.settings.transfer_syntax_order()
        offered = acceptor_order(preferred) if sender_rest else preferred
        for uid in _NON_PATIENT_OBJECT_CLASSES.values():
            ae.add_supported_context(uid, offered)
        ae.maximum_associations = self.settings.max_associations
        ae.maximum_pdu_size = self.settings.max_pdu_size
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.network_timeout
        ae.require_called_aet = False
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, on_connection_open),
            (evt.EVT_CONN_OPEN, limit_pdu_sizes,
             [self.settings.max_pdu_size, self.settings.network_timeout]),
            (evt.EVT_FSM_TRANSITION, end_aborted_soon),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
        ]
        address = (self.settings.host, self.settings.port)
        tls = server_tls_context(self.settings.tls)
        if self._shared_port:
            server = ae.make_server(address, evt_handlers=handlers, ssl_context=tls,
                                    server_class=SharedPortServer)
            threading.Thread(target=server.serve_forever, name="receiver",
                             daemon=True).start()
            self._server = server
        else:
            self._server = ae.start_server(address, block=False, evt_handlers=handlers,
                                           ssl_context=tls)
        if not self._shared_port:  # a receiver process: the pool says it for all of them
            log.info("receiving as %s on %s:%d%s", self.settings.ae_title, self.settings.host,
                     self.port, " (TLS)" if self.settings.tls.enabled else "")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def _on_requested(self, event: Any) -> None:
        """``EVT_REQUESTED``: apply the allow-lists before pynetdicom negotiates; a refusal
        is answered with an A-ASSOCIATE-RJ (rejected-permanent, by the service user)."""
        if self._on_association is not None:
            try:
                self._on_association()
            except Exception:  # the association is still served with what is known
                log.exception("could not refresh the configuration for a new association")
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        source_ip = str(assoc.requestor.address)
        refusal = check_association(self.settings, calling, called, source_ip)
        if refusal is None:
            order_proposed_contexts(request.presentation_context_definition_list,
                                    *self.settings.transfer_syntax_order())
            return
        log.warning("association refused by %s: calling AE %r, called AE %r, from %s (%s)",
                    refusal.rule, calling, called, source_ip,
                    refusal.reason.name.lower().replace("_", " "))
        assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, int(refusal.reason))
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()  # waits until the A-ASSOCIATE-RJ has gone out

    @staticmethod
    def _on_c_echo(event: Any) -> int:
        return dimse.SUCCESS

    def _on_c_store(self, event: Any) -> int | Dataset:
        started = time.monotonic()
        try:
            request = event.request
            assoc = event.assoc
            if str(request.AffectedSOPInstanceUID or "") in ("", MISSING_UID):
                log.warning("refused a C-STORE request from %s: no Affected SOP Instance UID",
                            str(assoc.requestor.ae_title).strip())
                response = store_response(dimse.CANNOT_UNDERSTAND,
                                          "C-STORE request has no Affected SOP Instance UID")
                assert isinstance(response, Dataset)
                response.AffectedSOPInstanceUID = ""  # not the placeholder: none
                return response
            streamed = Path(event.dataset_path) if self._streamed else None
            incoming = Incoming(
                dataset=b"" if streamed else event.encoded_dataset(include_meta=False),
                dataset_file=streamed,
                stream_error=write_failure(streamed) if streamed else None,
                transfer_syntax_uid=str(event.context.transfer_syntax),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                calling_aet=str(assoc.requestor.ae_title),
                called_aet=str(assoc.acceptor.ae_title),
                source_ip=str(assoc.requestor.address),
                started=started,
            )
        except Exception:
            log.exception("could not read a C-STORE request")
            return store_response(dimse.OUT_OF_RESOURCES, "the C-STORE request could not be read")
        result = self._pipeline.ingest(incoming)
        return store_response(result.status, result.detail)
