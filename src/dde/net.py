"""What every DICOM connection of the router needs from pynetdicom's networking.

pynetdicom never sets TCP_NODELAY; without it each C-STORE waits on Nagle's 40 ms timer.
``EVT_CONN_OPEN`` fires for accepted and for requested connections alike.

pynetdicom's two threads per association poll: the association thread sleeps 1 ms between
looks at its DIMSE queue, the DUL thread 1 ms whenever the socket had nothing. A C-STORE
crosses both on the way in and on the way out, so about 2 ms of each 0.5 MB instance (5 ms
at the PACS's own speed) were sleeps. :func:`quicken_reactors` shortens both to
:data:`REACTOR_POLL_SECONDS`; an idle association then costs a little more CPU.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pynetdicom.association

log = logging.getLogger(__name__)

REACTOR_POLL_SECONDS = 0.0002
_reactor_poll: float | None = None


class _CappedSleep:
    """Stands in for the ``time`` module inside ``pynetdicom.association`` (which uses it
    only to sleep): every sleep is cut to ``limit``. The loops around the sleeps re-check
    their condition, so a shorter sleep only polls sooner."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.limit))


def quicken_reactors(limit: float = REACTOR_POLL_SECONDS) -> None:
    """Shorten pynetdicom's polling sleeps in this process (associations opened from now)."""
    global _reactor_poll
    _reactor_poll = limit
    setattr(pynetdicom.association, "time", _CappedSleep(limit))  # noqa: B010


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # e.g. the peer is already gone
        log.debug("TCP_NODELAY not set: %s", exc)


def on_connection_open(event: Any) -> None:
    """pynetdicom ``EVT_CONN_OPEN`` handler: switch Nagle's algorithm off (and shorten
    the DUL thread's idle sleep once :func:`quicken_reactors` was called)."""
    try:
        dul = event.assoc.dul
        sock = dul.socket.socket
    except AttributeError:
        return
    set_nodelay(sock)
    if _reactor_poll is not None:
        dul._run_loop_delay = min(dul._run_loop_delay, _reactor_poll)
