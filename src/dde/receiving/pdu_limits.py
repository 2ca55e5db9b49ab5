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

:func:`end_aborted_soon` (an ``EVT_FSM_TRANSITION`` handler) frees the association slot
soon after a connection failed before or during association. pynetdicom's acceptor thread
waits ``acse_timeout`` (30 s by default) for the A-ASSOCIATE-RQ even when the connection
already sent garbage and was aborted, or closed; and an aborted association (state Sta13:
A-ABORT sent, awaiting the peer's close) waits its ARTIM timer, also ``acse_timeout``. Each
held one of ``max_associations``, so a burst of garbage connections locked real senders out
for that long. The handler wakes the waiting acceptor (as if its wait had timed out) when
the state machine leaves Sta2 other than to Sta3 (a valid request), and caps the ARTIM wait
in Sta13 at :data:`ABORT_LINGER`.
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


ABORT_LINGER = 1.0
"""Seconds an association the receiver aborted waits for the peer to close (Sta13)."""
ABORTED_STATE = "Sta13"
AWAITING_REQUEST = "Sta2"
REQUEST_RECEIVED = "Sta3"


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
            return self._read_body(nr_bytes)
        data = self._recv(nr_bytes)
        if nr_bytes == 6 and len(data) == 6:
            pdu_type, _, length = struct.unpack(">BBL", bytes(data))
            limit = self.limit(pdu_type)
            if limit is not None and length > limit:
                self._abort(pdu_type, length, limit)
            self._header_next = False
        return data

    def _read_body(self, nr_bytes: int) -> bytearray:
        """Read a PDU body with as few ``recv_into`` calls as the network allows
        (pynetdicom reads 4 KiB at a time: 64 Python-level reads per 256 KiB PDU). Returns
        what was read when the peer closes early, as pynetdicom's own loop does."""
        raw = getattr(self._socket, "socket", None)
        if raw is None:
            return self._recv(nr_bytes)
        buffer = bytearray(nr_bytes)
        got = 0
        with memoryview(buffer) as view:
            while got < nr_bytes:
                count = raw.recv_into(view[got:], nr_bytes - got)
                if not count:
                    break
                got += count
        if got < nr_bytes:
            del buffer[got:]
        return buffer

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


def end_aborted_soon(event: Any, linger: float = ABORT_LINGER) -> None:
    """``EVT_FSM_TRANSITION`` handler for accepted connections (see the module docstring)."""
    current = getattr(event, "current_state", None)
    following = getattr(event, "next_state", None)
    try:
        dul = event.assoc.dul
    except AttributeError:
        return
    if following == ABORTED_STATE:
        timer = dul.artim_timer
        if timer.timeout is None or timer.timeout > linger:
            timer.timeout = linger
    if current == AWAITING_REQUEST and following != REQUEST_RECEIVED:
        # no A-ASSOCIATE-RQ will come: end the acceptor's wait for it (None is what its
        # wait returns on a timeout; it then stops the DUL and closes the connection)
        dul.to_user_queue.put(None)
