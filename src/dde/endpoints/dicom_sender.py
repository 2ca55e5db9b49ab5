"""Deliver spooled instances by DICOM C-STORE over the router's own engine, reusing one
association while work lasts; and C-ECHO for health checks.

The spool file's dataset is sent as it lies on disk (streamed in P-DATA fragments sized to
the destination's maximum PDU, never decoded) when the destination accepted a presentation
context with exactly the instance's SOP class and transfer syntax. Each association
proposes one context per (SOP class, transfer syntax) pair the queue is about to send and,
per SOP class, one with the uncompressed syntaxes (:mod:`dde.endpoints.syntax_fallback`):
an instance whose own syntax was rejected is transcoded losslessly to one of those and sent
as such (the delivery records both syntaxes); a SOP class the destination rejects, or a
syntax nothing can decode, is a permanent refusal with the reason. What each association's
answers say about the destination is handed to ``on_learned`` (the ledger keeps it).

With ``storage_commitment`` on the endpoint, every association also proposes the Storage
Commitment Push Model, and :meth:`DicomSender.request_commitment` sends the N-ACTION of a
delivered study on the association in hand (or on one of its own when that one is gone);
the N-EVENT-REPORT comes later, to the router's receiver (or, from an SCP that reports on
the same association, while this one waits for a response: handed to ``on_report``).

Senders are called from one delivery thread each: every sender runs its association on an
event loop of its own, created for the association and closed with it. ``abort`` (from
another thread, when stopping) drops the connection so a send blocked on the peer returns.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dde.config import DeliverySettings, EndpointSettings
from dde.dicom import status as dimse
from dde.dicom.commitment import (
    COMMITMENT_TRANSFER_SYNTAXES,
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
    CommitmentReport,
    CommitmentRequest,
)
from dde.dicom.engine.blocking import BlockingLoop
from dde.dicom.engine.commands import VERIFICATION_SOP_CLASS
from dde.dicom.engine.negotiation import (
    MAX_CONTEXTS,
    AcceptedContext,
    AssociationRejected,
    AssociationRequest,
    ProposedContext,
)
from dde.dicom.engine.pdus import ProtocolError
from dde.dicom.engine.requestor import AssociationAborted, NoResponse, Requestor, SendStalled
from dde.dicom.part10 import NotPart10
from dde.dicom.transcoding import TranscodeError
from dde.endpoints import syntax_fallback
from dde.endpoints.sending import SendResult, SendStatus, Shipment
from dde.store.capabilities import LearnedPair

log = logging.getLogger(__name__)

Pair = tuple[str, str]
T = TypeVar("T")


def tls_context(endpoint: EndpointSettings) -> ssl.SSLContext | None:
    if not endpoint.tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=endpoint.tls.ca_file)
    if endpoint.tls.cert_file:
        context.load_cert_chain(endpoint.tls.cert_file, endpoint.tls.key_file)
    if not endpoint.tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def user_identity(endpoint: EndpointSettings) -> tuple[str, str] | None:
    """Username and passcode for user identity negotiation, when the endpoint has both."""
    if not endpoint.username or endpoint.password is None:
        return None
    return endpoint.username, endpoint.password.get_secret_value()


def connection_problem(exc: BaseException) -> str:
    """A short reason a connection or association attempt failed."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def request_for(endpoint: EndpointSettings, calling_aet: str,
                contexts: list[ProposedContext]) -> AssociationRequest:
    return AssociationRequest(called_aet=endpoint.aet, calling_aet=calling_aet,
                              contexts=contexts, user_identity=user_identity(endpoint))


def c_echo(endpoint: EndpointSettings, calling_aet: str, timeout: float) -> str | None:
    """C-ECHO the endpoint; None when it answered success, else why not."""
    request = request_for(endpoint, calling_aet, [ProposedContext(
        VERIFICATION_SOP_CLASS, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))])

    async def echo() -> str | None:
        try:
            assoc = await Requestor.open(endpoint.host, endpoint.port, request,
                                         connect_timeout=timeout, send_timeout=timeout,
                                         tls=tls_context(endpoint))
        except AssociationRejected as exc:
            return f"C-ECHO: {exc}"
        except (OSError, TimeoutError, ProtocolError, ssl.SSLError) as exc:
            return f"C-ECHO failed: {connection_problem(exc)}"
        try:
            response = await assoc.c_echo(response_timeout=timeout)
        except (OSError, TimeoutError, ProtocolError) as exc:
            assoc.abort()
            return f"C-ECHO: no response ({exc or type(exc).__name__})"
        await assoc.release(timeout)
        if response.status != dimse.SUCCESS:
            return f"C-ECHO answered {dimse.describe(response.status)}"
        return None

    loop = BlockingLoop()
    try:
        return loop.run(echo())
    finally:
        loop.close()


class DicomSender:
    def __init__(self, endpoint: EndpointSettings, delivery: DeliverySettings,
                 calling_aet: str, *, scratch: Path | None = None,
                 on_learned: Callable[[list[LearnedPair]], None] | None = None,
                 on_report: Callable[[CommitmentReport], int] | None = None) -> None:
        """``scratch``: the folder for transcoded copies (the spool's incoming folder, so
        that a crash's leftovers are swept); ``on_learned``: what each association says
        about the destination; ``on_report``: a storage commitment report that comes on
        one of this sender's associations (its status is answered)."""
        self.endpoint = endpoint
        self._calling_aet = calling_aet
        self._scratch = scratch
        self._on_learned = on_learned
        self._on_report = on_report
        self._commitment = endpoint.storage_commitment
        self._transcode_max = delivery.transcode_max_bytes
        self._connect_timeout = delivery.connect_timeout
        self._send_timeout = delivery.dimse_timeout
        # The wait for one C-STORE response: shorter than the association's idle limit, so
        # an instance the destination never answers is found suspect soon.
        self._response_timeout = min(delivery.response_timeout_seconds, delivery.dimse_timeout)
        self._aborting = False
        self._lock = threading.Lock()
        self._loop: BlockingLoop | None = None
        self._assoc: Requestor | None = None
        self._proposed: set[Pair] = set()
        self._upcoming: list[Pair] = []

    def prepare(self, shipments: list[Shipment]) -> None:
        pairs: list[Pair] = []
        for shipment in shipments:
            pair = (shipment.sop_class_uid, shipment.transfer_syntax_uid)
            if pair not in pairs:
                pairs.append(pair)
        self._upcoming = pairs

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = BlockingLoop()
            loop = self._loop
        return loop.run(coroutine)

    def _associated(self) -> bool:
        return self._assoc is not None and not self._assoc.closed

    def _associate(self, needed: Pair) -> SendResult | None:
        self._end_association()
        contexts, pairs = syntax_fallback.proposals(
            [needed] + [p for p in self._upcoming if p != needed],
            MAX_CONTEXTS - (1 if self._commitment else 0), self._transcode_max > 0)
        storage = list(contexts)
        if self._commitment:
            contexts.append(ProposedContext(STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
                                            COMMITMENT_TRANSFER_SYNTAXES))
        problem = self._open(contexts)
        if problem is not None:
            return problem
        self._proposed = set(pairs)
        assoc = self._assoc
        assert assoc is not None
        log.debug("associated with %s: %d of %d contexts accepted", self.endpoint.name,
                  len(assoc.negotiated.accepted), len(contexts))
        if self._on_learned is not None:
            try:
                self._on_learned(syntax_fallback.learned(storage, assoc.negotiated))
            except Exception as exc:  # what is learned is a hint; delivery goes on
                log.warning("could not record what %s accepts: %s", self.endpoint.name, exc)
        return None

    def _open(self, contexts: list[ProposedContext]) -> SendResult | None:
        """A new association proposing ``contexts`` (the one in hand ended first)."""
        self._end_association()
        request = request_for(self.endpoint, self._calling_aet, contexts)
        try:
            assoc = self._run(Requestor.open(
                self.endpoint.host, self.endpoint.port, request,
                connect_timeout=self._connect_timeout, send_timeout=self._send_timeout,
                tls=tls_context(self.endpoint)))
        except AssociationRejected as exc:
            return SendResult.unreachable(str(exc))
        except (OSError, TimeoutError, ProtocolError, ssl.SSLError) as exc:
            return SendResult.unreachable(f"cannot associate: {connection_problem(exc)}")
        assoc.on_event_report = self._on_report
        with self._lock:
            self._assoc = assoc
        return None

    def request_commitment(self, request: CommitmentRequest) -> str | None:
        """Ask the destination to commit to ``request``'s instances (N-ACTION); None when
        it took the request (the report comes later), else why not. On the association in
        hand when it accepted the Storage Commitment Push Model, else on a new one."""
        if self._aborting:
            return "not requested: delivery is stopping"
        assoc = self._assoc
        if assoc is None or assoc.closed or \
                assoc.negotiated.context_of(STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS) is None:
            problem = self._open([ProposedContext(STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
                                                  COMMITMENT_TRANSFER_SYNTAXES)])
            if problem is not None:
                return f"storage commitment not requested: {problem.detail}"
            assoc = self._assoc
            assert assoc is not None
            self._proposed = set()
        if assoc.negotiated.context_of(STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS) is None:
            return (f"{self.endpoint.name} does not accept the Storage Commitment Push Model "
                    "SOP Class")
        try:
            response = self._run(assoc.n_action(request,
                                                response_timeout=self._response_timeout))
        except (NoResponse, SendStalled, AssociationAborted, ProtocolError, OSError) as exc:
            self._end_association(abort=True)
            return f"storage commitment not requested: {exc}"
        if response.status != dimse.SUCCESS:
            detail = f"N-ACTION refused: {dimse.describe(response.status)}"
            if response.error_comment:
                detail += f": {response.error_comment[:200]}"
            return detail
        return None

    def send(self, shipment: Shipment) -> SendResult:
        if self._aborting:
            return SendResult.refused("not sent: delivery is stopping")
        pair = (shipment.sop_class_uid, shipment.transfer_syntax_uid)
        if not self._associated() or pair not in self._proposed:
            problem = self._associate(pair)
            if problem is not None:
                return problem
        assoc = self._assoc
        assert assoc is not None
        route = syntax_fallback.plan(assoc.negotiated, self.endpoint.name, *pair,
                                     transcoding=self._transcode_max > 0)
        if route.context is None:
            return SendResult.refused(route.reason, permanent=True)
        if route.target_syntax is None:
            return self._store(assoc, shipment.path, route.context, shipment)
        try:
            with syntax_fallback.transcoded_copy(shipment.path, route.target_syntax,
                                                 self._scratch, self._transcode_max) as copy:
                result = self._store(assoc, copy, route.context, shipment)
        except FileNotFoundError:
            return SendResult.refused("spool file is missing", permanent=True)
        except TranscodeError as exc:
            return SendResult.refused(
                f"{self.endpoint.name} does not accept {pair[1]} and it cannot be "
                f"transcoded: {exc}", permanent=True)
        except OSError as exc:
            return SendResult.refused(f"transcoded copy could not be written: {exc}")
        if result.status is not SendStatus.DELIVERED:
            return result
        return SendResult.delivered(result.detail, transfer_syntax_uid=route.target_syntax,
                                    transcoded_from=pair[1])

    def _store(self, assoc: Requestor, path: Path, context: AcceptedContext,
               shipment: Shipment) -> SendResult:
        """One C-STORE of the dataset in ``path`` over ``context``."""
        try:
            response = self._run(assoc.c_store(path, context, shipment.sop_instance_uid,
                                               response_timeout=self._response_timeout))
        except FileNotFoundError:
            return SendResult.refused("spool file is missing", permanent=True)
        except NotPart10 as exc:
            return SendResult.refused(f"spool file cannot be sent: {exc}", permanent=True)
        except SendStalled as exc:  # half a message went out: only an abort ends it
            self._end_association(abort=True)
            if self._aborting:
                return SendResult.refused(f"C-STORE could not be sent: {exc}")
            return SendResult.no_response(f"C-STORE could not be sent: {exc}")
        except NoResponse as exc:
            self._end_association(abort=True)
            if self._aborting:
                return SendResult.refused("no C-STORE response (association aborted)")
            return SendResult.no_response(f"{exc} (association aborted)")
        except (AssociationAborted, ProtocolError, OSError) as exc:
            self._end_association(abort=True)
            return SendResult.refused(f"C-STORE could not be sent: {exc}")
        code = response.status
        if dimse.is_success_or_warning(code):
            return SendResult.delivered(dimse.describe(code))
        detail = f"C-STORE refused: {dimse.describe(code)}"
        if response.error_comment:
            detail += f": {response.error_comment[:200]}"
        return SendResult.refused(detail, permanent=dimse.is_permanent_failure(code))

    def abort(self) -> None:
        """From another thread: drop the association so that a send waiting on the peer
        returns now (the abort runs on the sender's loop, now or when it next runs)."""
        self._aborting = True
        with self._lock:
            loop, assoc = self._loop, self._assoc
            if loop is None or assoc is None or loop.closed:
                return
            loop.call_soon_threadsafe(assoc.abort)

    def _end_association(self, *, abort: bool = False) -> None:
        with self._lock:
            assoc, self._assoc = self._assoc, None
        self._proposed = set()
        if assoc is None or assoc.closed:
            return
        if abort:
            assoc.abort()
            return
        try:
            self._run(assoc.release(self._connect_timeout))
        except Exception:  # releasing a broken association must never raise
            log.debug("release of association to %s failed", self.endpoint.name)

    def release(self) -> None:
        self._end_association()
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()
