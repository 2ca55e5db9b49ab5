"""Socket options every DICOM connection of the router needs.

pynetdicom never sets TCP_NODELAY; without it each C-STORE waits on Nagle's 40 ms timer.
``EVT_CONN_OPEN`` fires for accepted and for requested connections alike.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger(__name__)


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # e.g. the peer is already gone
        log.debug("TCP_NODELAY not set: %s", exc)


def on_connection_open(event: Any) -> None:
    """pynetdicom ``EVT_CONN_OPEN`` handler: switch Nagle's algorithm off."""
    try:
        sock = event.assoc.dul.socket.socket
    except AttributeError:
        return
    set_nodelay(sock)
