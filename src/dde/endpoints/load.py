"""Live load of each PACS, cached and refreshed in the background: Orthanc's instance count,
or for a ``dicomweb`` endpoint the number of studies QIDO-RS lists.

The routing decision must not make an HTTP call per instance, so a background thread polls
``GET {url}/statistics`` (or ``GET {url}/studies``) every ``refresh`` seconds. Instances
delivered between two polls are added to an instance count so the figure does not dip until
the next poll (not to a study count: an instance may join a study already counted). A
``dicomweb`` endpoint with ``qido_load: false`` is not polled: its load is unknown (0), only
its queue counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from dde.config import EndpointKind, EndpointSettings
from dde.endpoints.http import CredentialsError, http_client

log = logging.getLogger(__name__)


@dataclass
class _Load:
    stored: int = 0
    delivered_since_poll: int = 0
    polled_at: float | None = None
    error: str | None = None


class LoadBook:
    def __init__(self, refresh: float,
                 client_factory: Callable[[EndpointSettings], httpx.Client] | None = None) -> None:
        self.refresh = refresh
        self._loads: dict[str, _Load] = {}
        self._endpoints: dict[str, EndpointSettings] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client_factory = client_factory or _default_client
        # One keep-alive client per endpoint: building a client (and its TLS context) per
        # poll costs milliseconds of CPU each time.
        self._clients: dict[str, tuple[EndpointSettings, httpx.Client]] = {}

    def set_endpoints(self, endpoints: Iterable[EndpointSettings]) -> None:
        with self._lock:
            self._endpoints = {e.name: e for e in endpoints}
            for name in self._endpoints:
                self._loads.setdefault(name, _Load())

    def stored(self, name: str) -> int:
        with self._lock:
            entry = self._loads.get(name)
            return 0 if entry is None else entry.stored + entry.delivered_since_poll

    def note_delivered(self, name: str, count: int = 1) -> None:
        with self._lock:
            endpoint = self._endpoints.get(name)
            if endpoint is not None and endpoint.kind is EndpointKind.DICOMWEB:
                return  # its figure counts studies
            entry = self._loads.setdefault(name, _Load())
            entry.delivered_since_poll += count

    def snapshot(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {
                name: {"stored": e.stored + e.delivered_since_poll, "polled_at": e.polled_at,
                       "error": e.error}
                for name, e in self._loads.items()
            }

    def poll_once(self) -> None:
        with self._lock:
            endpoints = [e for e in self._endpoints.values() if e.url and (
                e.kind is not EndpointKind.DICOMWEB or e.qido_load)]
        for endpoint in endpoints:
            started = time.time()
            try:
                count = _poll(self._client_for(endpoint), endpoint)
            except (httpx.HTTPError, CredentialsError, ValueError, KeyError,
                    TypeError) as exc:
                with self._lock:
                    entry = self._loads.setdefault(endpoint.name, _Load())
                    entry.error = type(exc).__name__
                log.debug("load poll of %s failed: %s", endpoint.name, exc)
                continue
            with self._lock:
                entry = self._loads.setdefault(endpoint.name, _Load())
                entry.stored = count
                entry.delivered_since_poll = 0
                entry.polled_at = started
                entry.error = None

    def _client_for(self, endpoint: EndpointSettings) -> httpx.Client:
        cached = self._clients.get(endpoint.name)
        if cached is not None and cached[0] == endpoint:
            return cached[1]
        if cached is not None:
            cached[1].close()
        client = self._client_factory(endpoint)
        self._clients[endpoint.name] = (endpoint, client)
        return client

    def start(self) -> None:
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="load-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for _, client in self._clients.values():
            client.close()
        self._clients.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                self.poll_once()
            except Exception:  # never let the poller die
                log.exception("load poll failed")


def _poll(client: httpx.Client, endpoint: EndpointSettings) -> int:
    """The endpoint's load figure: instances (Orthanc ``/statistics``), or studies listed by
    QIDO-RS for a ``dicomweb`` endpoint (an origin server may cap a search's results)."""
    if endpoint.kind is EndpointKind.DICOMWEB:
        response = client.get(f"{(endpoint.url or '').rstrip('/')}/studies",
                              headers={"Accept": "application/dicom+json"})
        response.raise_for_status()
        if response.status_code == 204:  # no study matches
            return 0
        studies = response.json()
        if not isinstance(studies, list):
            raise TypeError("a QIDO-RS answer is a list")
        return len(studies)
    response = client.get(f"{endpoint.url}/statistics")
    response.raise_for_status()
    return int(response.json()["CountInstances"])


def _default_client(endpoint: EndpointSettings) -> httpx.Client:
    return http_client(endpoint, timeout=3.0)
