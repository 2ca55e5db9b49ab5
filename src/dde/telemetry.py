"""What the receive and delivery paths report as it happens, for metrics.

The ingest pipeline and the dispatcher call a :class:`Telemetry` at each event. The base
class does nothing (unit tests and tools that need no metrics use it as is); the web part
passes one that feeds Prometheus (:mod:`dde.web.metrics`). Methods must be cheap and must
never raise: they run on the C-STORE and delivery paths.
"""

from __future__ import annotations


class Telemetry:
    """No-op event sink; subclass and override the events you count."""

    def instance_received(self, size: int, ack_seconds: float) -> None:
        """An instance was acknowledged with success (``size``: dataset bytes)."""

    def instance_refused(self, reason: str, ack_seconds: float) -> None:
        """An instance got a failure status; ``reason`` is a short fixed label."""

    def delivery_succeeded(self, endpoint: str, latency_seconds: float | None) -> None:
        """A delivery reached ``endpoint``; latency is from receipt to delivery (None when
        the receipt time is not known)."""

    def delivery_failed(self, endpoint: str) -> None:
        """A delivery to ``endpoint`` gave up (failed state: no more automatic retries)."""

    def deliveries_taken_over(self, endpoint: str, count: int) -> None:
        """``count`` deliveries to ``endpoint`` were claimed after another worker's lease
        expired (a node died while holding them): each may be sent a second time."""


NULL_TELEMETRY = Telemetry()
