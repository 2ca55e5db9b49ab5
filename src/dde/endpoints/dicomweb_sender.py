"""Deliver spooled instances to a DICOMweb origin server with STOW-RS (``POST {url}/studies``).

The instances of one study claimed together go in one request (up to
``delivery.stow_max_instances`` and ``delivery.stow_max_bytes``), their Part-10 files streamed
from the spool unchanged (:mod:`dde.endpoints.stow_rs`). The answer's Referenced and Failed
SOP sequences give each instance its own outcome: a partial failure fails only the instances
the server names, with its reason.

How HTTP answers map to outcomes (see ``docs/architecture.md``):

* 200, 202, 400, 409 with a STOW-RS body: per instance — stored: delivered; failed with a
  "not now" reason (0x0110, 0xA700): retried; any other reason: failed at once; named in
  neither sequence: retried (the server did not acknowledge it).
* 400/409/413/415 without a per-instance answer: the only instance fails; several are each
  retried alone (``suspect``: the suspect lane sends one per request) so that one bad
  instance cannot fail its study.
* 429, or 503 with ``Retry-After``: throttled — retried after the wait asked, no attempt spent.
* other 5xx, 408, a read or write timeout: retried on the usual schedule.
* 401/403 (credentials), 404 (url), no connection: the endpoint is unreachable — its workers
  back off, no attempt is spent, health shows it down — until fixed.
"""

from __future__ import annotations

import time

import httpx

from dde.config import DeliverySettings, EndpointSettings
from dde.endpoints.http import CredentialsError, KeptClient, retry_after_seconds
from dde.endpoints.sending import SendResult, Shipment
from dde.endpoints.stow_rs import (
    StowResponseError,
    content_type,
    multipart_body,
    new_boundary,
    parse_response,
)

ITEMISED_STATUSES = frozenset({200, 202, 400, 409})
"""HTTP statuses whose body is a STOW-RS response naming each instance (PS3.18 §10.5.3)."""
WHOLE_REQUEST_REFUSALS = frozenset({400, 409, 413, 415})
"""Client errors that refuse the request as a whole when the body names no instance."""
THROTTLING_STATUSES = frozenset({429, 503})
"""Too many requests / service unavailable: with ``Retry-After`` (always for 429), wait."""
RETRY_LATER_STATUSES = frozenset({408})
CREDENTIAL_STATUSES = frozenset({401, 403})
NOT_FOUND = 404
DICOM_JSON = "application/dicom+json"


class DicomWebSender:
    """STOW-RS to one endpoint over one keep-alive HTTP connection (a
    :class:`~dde.endpoints.sending.BundleSender`)."""

    def __init__(self, endpoint: EndpointSettings, delivery: DeliverySettings,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not endpoint.url:
            raise ValueError(f"endpoint {endpoint.name} of kind dicomweb needs a url")
        self.endpoint = endpoint
        self._studies_url = f"{endpoint.url.rstrip('/')}/studies"
        self._timeout = delivery.dimse_timeout
        self._max_bytes = delivery.stow_max_bytes
        self._max_instances = delivery.stow_max_instances
        self._http = KeptClient(endpoint, delivery.dimse_timeout, transport)

    def prepare(self, shipments: list[Shipment]) -> None:
        return None

    def bundles(self, shipments: list[Shipment]) -> list[list[int]]:
        """Study by study (in order of first appearance), each cut where the next file would
        pass ``stow_max_bytes`` or the bundle would pass ``stow_max_instances``."""
        by_study: dict[str | None, list[int]] = {}
        for position, shipment in enumerate(shipments):
            by_study.setdefault(shipment.study_instance_uid, []).append(position)
        bundles: list[list[int]] = []
        for positions in by_study.values():
            current: list[int] = []
            size = 0
            for position in positions:
                length = _size(shipments[position])
                if current and (len(current) >= self._max_instances
                                or size + length > self._max_bytes):
                    bundles.append(current)
                    current, size = [], 0
                current.append(position)
                size += length
            if current:
                bundles.append(current)
        return bundles

    def send(self, shipment: Shipment) -> SendResult:
        return self.send_bundle([shipment])[0]

    def send_bundle(self, shipments: list[Shipment]) -> list[SendResult]:
        present = [s for s in shipments if s.path.exists()]
        sent = self._post(present) if present else {}
        missing = SendResult.refused("spool file is missing", permanent=True)
        return [sent.get(s.sop_instance_uid, missing) if s in present else missing
                for s in shipments]

    def _post(self, shipments: list[Shipment]) -> dict[str, SendResult]:
        """{SOP Instance UID: result} of one STOW-RS request carrying ``shipments``."""
        def every(result: SendResult) -> dict[str, SendResult]:
            return {s.sop_instance_uid: result for s in shipments}

        try:
            client = self._http.get()
            boundary = new_boundary()
            response = client.post(
                self._studies_url, content=multipart_body([s.path for s in shipments],
                                                          boundary),
                headers={"Content-Type": content_type(boundary), "Accept": DICOM_JSON})
        except CredentialsError as exc:
            return every(SendResult.unreachable(str(exc)))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self.release()
            return every(SendResult.unreachable(f"HTTP connection failed: {type(exc).__name__}"))
        except httpx.TimeoutException as exc:
            self.release()
            return every(SendResult.refused(
                f"STOW-RS: no answer within {self._timeout:g} s ({type(exc).__name__})"))
        except httpx.TransportError as exc:
            self.release()
            return every(SendResult.unreachable(f"HTTP transport error: {type(exc).__name__}"))
        except OSError as exc:  # a spool file vanished while it was being uploaded
            self.release()
            return every(SendResult.refused(f"spool file unreadable: {exc.strerror}"))
        return self._judge(response, shipments)

    def _judge(self, response: httpx.Response,
               shipments: list[Shipment]) -> dict[str, SendResult]:
        status = response.status_code
        detail = f"HTTP {status}"

        def every(result: SendResult) -> dict[str, SendResult]:
            return {s.sop_instance_uid: result for s in shipments}

        if status in ITEMISED_STATUSES:
            try:
                outcomes = parse_response(response.content)
            except StowResponseError as exc:
                outcomes = None
                detail += f" without a STOW-RS answer ({exc})"
            if outcomes:
                results: dict[str, SendResult] = {}
                for shipment in shipments:
                    outcome = outcomes.get(shipment.sop_instance_uid)
                    if outcome is None:
                        results[shipment.sop_instance_uid] = SendResult.refused(
                            f"{detail}: instance not named in the STOW-RS answer")
                    elif outcome.stored:
                        results[shipment.sop_instance_uid] = SendResult.delivered(
                            f"{detail}: {outcome.describe()}")
                    else:
                        results[shipment.sop_instance_uid] = SendResult.refused(
                            outcome.describe(), permanent=not outcome.retryable)
                return results
            if status in (200, 202):
                # Success claimed, but no instance acknowledged: a proxy or a login page may
                # answer 200 for a wrong url; nothing is taken as delivered on that word.
                return every(SendResult.refused(f"{detail} (check the endpoint's url)"))
        if status in CREDENTIAL_STATUSES:
            return every(SendResult.unreachable(f"{detail} (check the endpoint's credentials)"))
        if status == NOT_FOUND:
            return every(SendResult.unreachable(f"{detail} (check the endpoint's url: the "
                                                "DICOMweb service root)"))
        wait = retry_after_seconds(response.headers.get("Retry-After"), time.time())
        if status in THROTTLING_STATUSES and (wait is not None or status == 429):
            return every(SendResult.throttled(f"{detail}: throttled", wait or 0.0))
        if status in WHOLE_REQUEST_REFUSALS:
            if len(shipments) == 1:
                return every(SendResult.refused(detail, permanent=True))
            return every(SendResult.retry_alone(
                f"{detail} for a request of {len(shipments)} instances; each is retried alone"))
        permanent = 400 <= status < 500 and status not in RETRY_LATER_STATUSES
        return every(SendResult.refused(detail, permanent=permanent))

    def abort(self) -> None:
        self._http.abort()

    def release(self) -> None:
        self._http.release()


def _size(shipment: Shipment) -> int:
    try:
        return shipment.path.stat().st_size
    except OSError:
        return 0
