"""Bound what one PDU from a peer may cost the receiver.

pynetdicom reads a PDU as its 6-byte header, then ``recv(length)`` with the length the peer
claims, and the accepted socket has no timeout. So a peer that claims 2 GB makes the reader
buffer whatever it sends up to that, and a peer that claims a length and then goes silent
holds an association thread (one of ``max_associations``) forever.

:func:`limit_pdu_sizes` (an ``EVT_CONN_OPEN`` handler) closes both: a P-DATA-TF PDU longer
than the maximum PDU size we announced, or any other PDU longer than
:data:`MAX_CONTROL_PDU`, is a protocol error, answered with an A-ABORT (invalid PDU
parameter value) before its body is read; and the socket gets ``network_timeout``, so a read
stalled inside a PDU ends.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
MAX_CONTROL_PDU = 1024 * 1024
"""Largest A-ASSOCIATE-RQ (or other non-data PDU) accepted: far above any real request."""

# A-ABORT PDU: type 7, length 4, two reserved bytes, source 2 (service provider),
# reason 6 (invalid PDU parameter value).
A_ABORT_INVALID_PARAMETER = bytes([0x07, 0x00, 0, 0, 0, 4, 0x00, 0x00, 0x02, 0x06])


class PduTooLarge(OSError):
    """The peer announced a PDU larger than the receiver accepts."""


class _GuardedRecv:
    """Stands in for ``AssociationSocket.recv``: pynetdicom calls it in pairs, the 6-byte
    header then the body; the header's claimed length is checked before the body is read."""

    def __init__(self, assoc_socket: Any, max_pdu_size: int) -> None:
        self._socket = assoc_socket
        self._recv: Callable[[int], bytearray] = assoc_socket.recv
        self._max_pdu_size = max_pdu_size
        self._header_next = True

    def limit(self, pdu_type: int) -> int | None:
        if pdu_type == P_DATA_TF:
            return self._max_pdu_size or None  # 0: we announced no maximum
        return MAX_CONTROL_PDU

    def __call__(self, nr_bytes: int) -> bytearray:
        if not self._header_next:
            self._header_next = True
            return self._recv(nr_bytes)
        data = self._recv(nr_bytes)
        if nr_bytes == 6 and len(data) == 6:
            pdu_type, _, length = struct.unpack(">BBL", bytes(data))
            limit = self.limit(pdu_type)
            if limit is not None and length > limit:
                self._abort(pdu_type, length, limit)
            self._header_next = False
        return data

    def _abort(self, pdu_type: int, length: int, limit: int) -> None:
        log.warning("aborted an association: PDU type 0x%02X claims %d bytes, more than the "
                    "%d accepted", pdu_type, length, limit)
        raw = getattr(self._socket, "socket", None)
        if raw is not None:
            try:
                raw.sendall(A_ABORT_INVALID_PARAMETER)
            except OSError:
                pass
        raise PduTooLarge(f"PDU of {length} bytes exceeds the {limit} accepted")


def limit_pdu_sizes(event: Any, max_pdu_size: int, network_timeout: float | None) -> None:
    """``EVT_CONN_OPEN`` handler for accepted connections (see the module docstring)."""
    try:
        assoc_socket = event.assoc.dul.socket
        raw = assoc_socket.socket
    except AttributeError:
        return
    if raw is None:
        return
    if network_timeout is not None:
        try:
            raw.settimeout(network_timeout)
        except OSError:
            return  # already closed
    assoc_socket.recv = _GuardedRecv(assoc_socket, max_pdu_size)
