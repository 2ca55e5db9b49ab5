"""Socket options every connection of the engine gets: TCP_NODELAY (without it each small
PDU waits on Nagle's timer) and a large buffer in the direction the connection mostly
carries data."""

from __future__ import annotations

import asyncio
import socket
from typing import Final

SOCKET_BUFFER: Final = 4 << 20


def tune(writer: asyncio.StreamWriter, buffer_option: int) -> None:
    """Set TCP_NODELAY and ``buffer_option`` (``socket.SO_SNDBUF`` for a connection that
    sends datasets, ``socket.SO_RCVBUF`` for one that receives them). Never raises."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, buffer_option, SOCKET_BUFFER)
    except OSError:
        pass
