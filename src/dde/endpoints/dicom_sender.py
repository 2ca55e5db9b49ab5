"""Deliver spooled instances by DICOM C-STORE, reusing one association while work lasts.

The spool file is sent as it is (pynetdicom's chunked send: the encoded dataset is streamed
from disk and never decoded), which needs an accepted presentation context with exactly the
instance's SOP class and transfer syntax. Each association proposes one context per
(SOP class, transfer syntax) pair the queue is about to send; a pair the destination rejects
is a permanent refusal for that instance, with the reason.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from pynetdicom import AE, build_context, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from dde.config import DeliverySettings, EndpointSettings
from dde.dicom import pynetdicom_adapter
from dde.dicom import status as dimse
from dde.dicom.pynetdicom_adapter import (
    SendStalled,
    bound_sending,
    cancel_sending,
    on_connection_open,
)
from dde.dicom.uids import uid_name
from dde.endpoints.sending import SendResult, Shipment

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
Pair = tuple[str, str]


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


def user_identity(endpoint: EndpointSettings) -> list[Any]:
    """DICOM user identity negotiation (username and passcode) when the endpoint has both."""
    if not endpoint.username or endpoint.password is None:
        return []
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = endpoint.username.encode()
    item.secondary_field = endpoint.password.get_secret_value().encode()
    item.positive_response_requested = False
    items: list[Any] = [item]
    return items


class DicomSender:
    def __init__(self, endpoint: EndpointSettings, delivery: DeliverySettings,
                 calling_aet: str) -> None:
        pynetdicom_adapter.install()  # chunked sending of the spool file as it is
        self.endpoint = endpoint
        self._ae = AE(ae_title=calling_aet)
        self._ae.acse_timeout = delivery.connect_timeout
        self._ae.connection_timeout = delivery.connect_timeout
        self._dimse_timeout = delivery.dimse_timeout
        # The wait for one C-STORE response: shorter than the association's idle limit, so
        # an instance the destination never answers is found suspect soon.
        self._response_timeout = min(delivery.response_timeout_seconds, delivery.dimse_timeout)
        self._ae.dimse_timeout = self._response_timeout
        self._aborting = False
        self._ae.network_timeout = delivery.dimse_timeout
        self._ae.maximum_pdu_size = 0  # no limit on what we accept back
        self._assoc: Any = None
        self._proposed: set[Pair] = set()
        self._accepted: set[Pair] = set()
        self._upcoming: list[Pair] = []

    def prepare(self, shipments: list[Shipment]) -> None:
        pairs: list[Pair] = []
        for shipment in shipments:
            pair = (shipment.sop_class_uid, shipment.transfer_syntax_uid)
            if pair not in pairs:
                pairs.append(pair)
        self._upcoming = pairs

    def _associated(self) -> bool:
        return self._assoc is not None and bool(self._assoc.is_established)

    def _associate(self, needed: Pair) -> SendResult | None:
        self.release()
        pairs = [needed] + [p for p in self._upcoming if p != needed]
        pairs = pairs[:MAX_CONTEXTS]
        contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]
        context = tls_context(self.endpoint)
        tls_args = (context, self.endpoint.host) if context is not None else None
        try:
            assoc = self._ae.associate(
                self.endpoint.host, self.endpoint.port, contexts=contexts,
                ae_title=self.endpoint.aet, tls_args=tls_args,
                ext_neg=user_identity(self.endpoint) or None,
                evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)],
            )
        except (OSError, ValueError, ssl.SSLError) as exc:
            return SendResult.unreachable(f"cannot associate: {exc}")
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                # The destination answered but accepted none of the contexts (pynetdicom
                # then aborts): a refusal of these instances, not an unreachable endpoint.
                self._proposed = set(pairs)
                return None
            if assoc.is_rejected:
                return SendResult.unreachable("association rejected by the destination")
            return SendResult.unreachable(
                "association not established (connection refused, timed out or aborted)"
            )
        bound_sending(assoc, self._dimse_timeout)
        self._assoc = assoc
        self._proposed = set(pairs)
        self._accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
        }
        log.debug("associated with %s: %d of %d contexts accepted", self.endpoint.name,
                  len(self._accepted), len(pairs))
        return None

    def send(self, shipment: Shipment) -> SendResult:
        pair = (shipment.sop_class_uid, shipment.transfer_syntax_uid)
        if not self._associated() or pair not in self._proposed:
            problem = self._associate(pair)
            if problem is not None:
                return problem
        if pair not in self._accepted:
            return SendResult.refused(
                f"{self.endpoint.name} does not accept {uid_name(pair[0])} "
                f"in {uid_name(pair[1])} (presentation context rejected)",
                permanent=True,
            )
        try:
            response = self._assoc.send_c_store(shipment.path)
        except FileNotFoundError:
            return SendResult.refused("spool file is missing", permanent=True)
        except SendStalled as exc:  # half a message went out: only an abort ends it
            self._forget().abort()
            if self._aborting:
                return SendResult.refused(f"C-STORE could not be sent: {exc}")
            return SendResult.no_response(f"C-STORE could not be sent: {exc}")
        except (ValueError, AttributeError, RuntimeError, OSError) as exc:
            self.release()
            return SendResult.refused(f"C-STORE could not be sent: {exc}")
        status = getattr(response, "Status", None)
        if status is None:
            if self._aborting:
                self.release()
                return SendResult.refused("no C-STORE response (association aborted)")
            # pynetdicom aborted it already; a release would wait on a silent peer.
            assoc = self._forget()
            try:
                assoc.abort()
            except Exception:  # an association already aborted must never raise here
                log.debug("abort of association to %s failed", self.endpoint.name)
            return SendResult.no_response(
                f"no C-STORE response within {self._response_timeout:g} s "
                "(association aborted or timed out)"
            )
        code = int(status)
        if dimse.is_success_or_warning(code):
            return SendResult.delivered(dimse.describe(code))
        comment = getattr(response, "ErrorComment", None)
        detail = f"C-STORE refused: {dimse.describe(code)}"
        if comment:
            detail += f": {str(comment)[:200]}"
        return SendResult.refused(detail, permanent=dimse.is_permanent_failure(code))

    def abort(self) -> None:
        """From another thread: abort the association so that a C-STORE waiting for its
        response returns now (pynetdicom's abort does not wake that wait, hence the put)."""
        self._aborting = True
        assoc = self._assoc
        if assoc is None:
            return
        cancel_sending(assoc)

    def _forget(self) -> Any:
        """Drop the association (and what was negotiated on it); return it."""
        assoc, self._assoc = self._assoc, None
        self._proposed = set()
        self._accepted = set()
        return assoc

    def release(self) -> None:
        assoc = self._forget()
        if assoc is not None and assoc.is_established:
            try:
                assoc.release()
            except Exception:  # releasing a broken association must never raise
                log.debug("release of association to %s failed", self.endpoint.name)
