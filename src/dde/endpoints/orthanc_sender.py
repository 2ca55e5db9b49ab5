"""Deliver spooled instances through Orthanc's REST API (``POST {url}/instances``).

The Part-10 file is streamed as the request body, unchanged. One HTTP client (keep-alive)
is reused while the queue has work.
"""

from __future__ import annotations

import httpx

from dde.config import DeliverySettings, EndpointSettings
from dde.endpoints.http import CredentialsError, KeptClient
from dde.endpoints.sending import SendResult, Shipment

_RETRY_LATER = (408, 429)
"""Client-error statuses that mean "not now" (request timeout, too many requests)."""


class OrthancRestSender:
    def __init__(self, endpoint: EndpointSettings, delivery: DeliverySettings,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not endpoint.url:
            raise ValueError(f"endpoint {endpoint.name} of kind orthanc-rest needs a url")
        self.endpoint = endpoint
        self._http = KeptClient(endpoint, delivery.dimse_timeout, transport)

    def prepare(self, shipments: list[Shipment]) -> None:
        return None

    def send(self, shipment: Shipment) -> SendResult:
        try:
            client = self._http.get()
            with shipment.path.open("rb") as body:
                response = client.post(
                    f"{self.endpoint.url}/instances", content=body,
                    headers={"Content-Type": "application/dicom"},
                )
        except CredentialsError as exc:
            return SendResult.unreachable(str(exc))
        except FileNotFoundError:
            return SendResult.refused("spool file is missing", permanent=True)
        except httpx.TransportError as exc:
            self.release()
            return SendResult.unreachable(f"HTTP transport error: {type(exc).__name__}")
        if response.status_code == 200:
            return SendResult.delivered("HTTP 200")
        detail = f"HTTP {response.status_code}"
        try:
            message = response.json().get("Message") or response.json().get("Details")
            if message:
                detail += f": {str(message)[:200]}"
        except (ValueError, AttributeError):
            pass
        if response.status_code in (401, 403):
            return SendResult.unreachable(f"{detail} (check the endpoint's credentials)")
        if response.status_code == 404:
            # Orthanc always has POST /instances: the url is wrong for every instance alike.
            return SendResult.unreachable(f"{detail} (check the endpoint's url)")
        permanent = (400 <= response.status_code < 500
                     and response.status_code not in _RETRY_LATER)
        return SendResult.refused(detail, permanent=permanent)

    def abort(self) -> None:
        self._http.abort()

    def release(self) -> None:
        self._http.release()
