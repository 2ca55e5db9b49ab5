"""A bound on what pynetdicom queues to send, so a 1 GB instance is not read into memory.

pynetdicom sends a C-STORE by turning the dataset (read from the spool file in chunks) into
P-DATA primitives and putting every one on the DUL thread's queue at once; the DUL thread
then writes them to the socket. The queue has no bound, so the whole instance is read into
memory ahead of the network (0.9 GB for a 1 GB instance). :class:`BoundedSendQueue` takes
the queue's place: a P-DATA waits for a free slot (the DUL thread frees one per PDU sent),
other primitives (release, abort) never wait.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from pynetdicom.pdu_primitives import P_DATA

SLOTS = 32
"""P-DATA primitives queued at most (32 × the destination's PDU size, 512 KiB for 16 KiB)."""
_WAIT_STEP = 0.1


class SendStalled(TimeoutError):
    """The destination has not taken data for ``timeout`` seconds (or sending was
    cancelled); the C-STORE is given up."""


class BoundedSendQueue(queue.Queue[Any]):
    def __init__(self, timeout: float, slots: int = SLOTS) -> None:
        super().__init__()
        self._slots = threading.Semaphore(slots)
        self._timeout = timeout
        self._cancelled = threading.Event()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, P_DATA):
            self._wait_for_slot()
        super().put(item, block, timeout)

    def _wait_for_slot(self) -> None:
        waited = 0.0
        while not self._slots.acquire(timeout=_WAIT_STEP):
            waited += _WAIT_STEP
            if self._cancelled.is_set():
                raise SendStalled("sending was cancelled")
            if waited >= self._timeout:
                raise SendStalled(f"the destination took no data for {self._timeout:.0f} s")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        if isinstance(item, P_DATA):
            self._slots.release()
        return item

    def cancel(self) -> None:
        """Wake a sender waiting for a slot (it raises :class:`SendStalled`)."""
        self._cancelled.set()
