"""An event loop for blocking callers (a delivery thread, ``dde send``, a health check):
``run(coroutine)`` returns its result. The loop runs in the calling thread, unless that
thread already runs an event loop of its own (an embedding application, a test driving a
browser): then it runs in a thread of its own and ``run`` waits for it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _in_a_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class BlockingLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        if _in_a_running_loop():
            self._thread = threading.Thread(target=self.loop.run_forever,
                                            name="dicom-association", daemon=True)
            self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._thread is None:
            return self.loop.run_until_complete(coroutine)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: ``callback`` runs on the loop (now, or when it next runs)."""
        self.loop.call_soon_threadsafe(callback)

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def close(self) -> None:
        if self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None
        if not self.loop.is_running():
            self.loop.close()
