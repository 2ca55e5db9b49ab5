"""Health of every endpoint: background probes and the dispatcher's results feed a breaker.

A DICOM endpoint is probed with C-ECHO, an ``orthanc-rest`` one with ``GET {url}/system``, a
``dicomweb`` one with QIDO-RS ``GET {url}/studies?limit=1``.
The breaker of each endpoint decides whether it is up (gets new studies) or down, and for how
long it has been down (failover). An endpoint is ``unknown`` until it first answers (or its
breaker opens): a new one is probed at once, before the others, and a group gives new
studies to an unknown member only while none of its members is known up
(:meth:`dde.routing.router.Router.candidates`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from dde.config import EndpointKind, EndpointSettings, HealthSettings
from dde.endpoints.breaker import Breaker
from dde.endpoints.dicom_sender import c_echo
from dde.endpoints.http import CredentialsError, http_client

log = logging.getLogger(__name__)

DOWN_REMINDER_SECONDS = 300.0
"""A down endpoint is logged when it goes down, then at most once per this many seconds."""

Probe = Callable[[EndpointSettings], str | None]
"""Returns None when the endpoint answered, else the reason it did not."""


def http_system(endpoint: EndpointSettings, timeout: float) -> str | None:
    try:
        with http_client(endpoint, timeout=timeout) as client:
            response = client.get(f"{endpoint.url}/system")
    except CredentialsError as exc:
        return str(exc)
    except httpx.HTTPError as exc:
        return f"GET /system failed: {type(exc).__name__}"
    if response.status_code != 200:
        return f"GET /system: HTTP {response.status_code}"
    return None


def qido_studies(endpoint: EndpointSettings, timeout: float) -> str | None:
    """A DICOMweb service is up when QIDO-RS answers a search for one study (200, or 204:
    none), with the endpoint's credentials: a cheap request that also checks them."""
    try:
        with http_client(endpoint, timeout=timeout) as client:
            response = client.get(f"{(endpoint.url or '').rstrip('/')}/studies",
                                  params={"limit": "1"},
                                  headers={"Accept": "application/dicom+json"})
    except CredentialsError as exc:
        return str(exc)
    except httpx.HTTPError as exc:
        return f"GET /studies failed: {type(exc).__name__}"
    if response.status_code not in (200, 204):
        return f"GET /studies: HTTP {response.status_code}"
    return None


class HealthMonitor:
    def __init__(self, settings: HealthSettings, calling_aet: str,
                 probe: Probe | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._calling_aet = calling_aet
        self._probe = probe or self._default_probe
        self._clock = clock
        self._lock = threading.Lock()
        self._endpoints: dict[str, EndpointSettings] = {}
        self._breakers: dict[str, Breaker] = {}
        self._probed: set[str] = set()
        """Endpoints with at least one result (a probe or a delivery)."""
        self._seen_up: set[str] = set()
        """Endpoints that answered at least once: the others are unknown until down."""
        self._reminded: dict[str, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._first_round = threading.Event()
        self._thread: threading.Thread | None = None
        self.listeners: list[Callable[[str, bool], None]] = []
        """Called with (endpoint name, is up) when an endpoint goes down or comes back."""
        self.status_listeners: list[Callable[[str, str], None]] = []
        """Called with (endpoint name, health) whenever :meth:`health` changes — also from
        unknown to up, which the ``listeners`` do not hear."""

    def _default_probe(self, endpoint: EndpointSettings) -> str | None:
        timeout = self.settings.probe_timeout_seconds
        if endpoint.kind is EndpointKind.ORTHANC_REST:
            return http_system(endpoint, timeout)
        if endpoint.kind is EndpointKind.DICOMWEB:
            return qido_studies(endpoint, timeout)
        return c_echo(endpoint, self._calling_aet, timeout)

    def configure(self, settings: HealthSettings, endpoints: Iterable[EndpointSettings]) -> None:
        with self._lock:
            self.settings = settings
            self._endpoints = {e.name: e for e in endpoints}
            for name in self._endpoints:
                breaker = self._breakers.setdefault(name, self._new_breaker())
                fresh = self._new_breaker()
                breaker.threshold = fresh.threshold
                breaker.base_backoff = fresh.base_backoff
                breaker.max_backoff = fresh.max_backoff
            for name in list(self._breakers):
                if name not in self._endpoints:
                    del self._breakers[name]
                    self._probed.discard(name)
                    self._seen_up.discard(name)
                    self._reminded.pop(name, None)
        self._wake.set()  # a new endpoint is probed now, not at the next interval

    def _new_breaker(self) -> Breaker:
        return Breaker(threshold=self.settings.failure_threshold,
                       base_backoff=min(1.0, self.settings.interval_seconds),
                       max_backoff=max(self.settings.interval_seconds * 4, 5.0))

    # -- what the others ask -------------------------------------------------------------
    def health(self, name: str) -> str:
        """``up``, ``down`` (breaker open or half-open) or ``unknown``: not configured, or
        never answered yet and not (yet) down — a new endpoint before its first probe, or one
        whose first probes failed fewer than ``failure_threshold`` times."""
        with self._lock:
            return self._health_locked(name)

    def _health_locked(self, name: str) -> str:
        breaker = self._breakers.get(name)
        if breaker is None:
            return "unknown"
        if breaker.down:
            return "down"
        return "up" if name in self._seen_up else "unknown"

    def wait_first_round(self, timeout: float) -> bool:
        """Wait until the first round of probes is over (at most ``timeout`` seconds)."""
        return self._first_round.wait(timeout)

    def is_down(self, name: str) -> bool:
        with self._lock:
            breaker = self._breakers.get(name)
            return breaker is not None and breaker.down

    def allows(self, name: str) -> bool:
        with self._lock:
            breaker = self._breakers.get(name)
            return breaker is None or breaker.allows(self._clock())

    def failed_over(self) -> set[str]:
        """Endpoints down for longer than ``failover_after_seconds``."""
        now = self._clock()
        with self._lock:
            limit = self.settings.failover_after_seconds
            return {name for name, b in self._breakers.items()
                    if b.down and b.down_for(now) >= limit}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        with self._lock:
            names = list(self._breakers)
        result = {}
        for name in names:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    continue
                entry = {"breaker": breaker.state(now).value,
                         "down_since": breaker.down_since if breaker.down else None,
                         "last_error": breaker.last_error}
            entry["health"] = self.health(name)
            result[name] = entry
        return result

    # -- what feeds it -------------------------------------------------------------------
    def report(self, name: str, ok: bool, error: str | None = None) -> None:
        changed = False
        remind = False
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                return
            was_down = breaker.down
            was = self._health_locked(name)
            self._probed.add(name)
            now = self._clock()
            if ok:
                breaker.record_success()
                self._seen_up.add(name)
                self._reminded.pop(name, None)
            else:
                breaker.record_failure(now, error or "failed")
            changed = was_down != breaker.down
            health = self._health_locked(name)
            if changed and not ok:
                self._reminded[name] = now
            elif breaker.down and now - self._reminded.get(name, now) >= DOWN_REMINDER_SECONDS:
                self._reminded[name] = now
                remind = True
            down_for = breaker.down_for(now)
        if changed:
            if ok:
                log.info("%s is up again", name)
            else:
                log.warning("%s is down (breaker open): %s", name, error)
            for listener in self.listeners:
                listener(name, ok)
        elif remind:
            log.warning("%s is still down after %.0f s: %s", name, down_for, error)
        if health != was:
            for status_listener in self.status_listeners:
                status_listener(name, health)

    def probe_once(self) -> None:
        """Probe every endpoint once; those never probed first (an endpoint just added does
        not wait behind the probe timeouts of the others)."""
        with self._lock:
            endpoints = sorted(self._endpoints.values(), key=lambda e: e.name in self._probed)
        for endpoint in endpoints:
            if self._stop.is_set():
                return
            try:
                problem = self._probe(endpoint)
            except Exception as exc:  # a probe must never kill the monitor
                problem = f"probe failed: {type(exc).__name__}"
            self.report(endpoint.name, problem is None, problem)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe_once()
            self._first_round.set()
            self._wake.wait(self.settings.interval_seconds)
            self._wake.clear()
