"""The listening side of the engine: an asyncio server in a thread of its own, serving every
association of this process on one event loop; the blocking steps (admission checks that
read configuration, the durable store) run in a small thread pool.

``reuse_port`` lets several processes listen on one port (``SO_REUSEPORT``: the kernel
spreads new connections over them). TLS is asyncio's: the handshake runs per connection on
the loop (bounded by the request timeout), never in an accept loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from dde.dicom.engine import sockets
from dde.dicom.engine.acceptor import Acceptor, AcceptorLimits, AcceptorServices, Slots

log = logging.getLogger(__name__)

START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 10.0


class AssociationServer:
    def __init__(self, host: str, port: int, services: AcceptorServices,
                 limits: AcceptorLimits, *, max_associations: int,
                 max_per_source: int | None = None, tls: ssl.SSLContext | None = None,
                 reuse_port: bool = False, workers: int = 8, name: str = "receiver") -> None:
        self._host = host
        self._port = port
        self._services = services
        self._limits = limits
        self._slots = Slots(max_associations, max_per_source)
        self._tls = tls
        self._reuse_port = reuse_port
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers),
                                            thread_name_prefix=f"{name}-store")
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.bound_port = 0

    @property
    def active_associations(self) -> int:
        return self._slots.active

    def start(self) -> None:
        """Listen; raise ``OSError`` when the address cannot be bound."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise OSError(f"the DICOM listener on {self._host}:{self._port} did not start")
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(
                self._connected, self._host, self._port, ssl=self._tls,
                ssl_handshake_timeout=self._limits.request_timeout if self._tls else None,
                reuse_port=self._reuse_port or None, reuse_address=True, backlog=128,
                limit=1 << 20))
            self.bound_port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as exc:  # reported to start()
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._wind_down())
            loop.close()

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        sockets.tune(writer, socket.SO_RCVBUF)
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await Acceptor(reader, writer, self._services, self._limits, self._slots,
                           self._executor, address).run()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:  # one association's bug must not reach the server
            log.exception("association from %s ended by an internal error", address)
            writer.transport.abort()
        finally:
            self._tasks.discard(task)

    async def _wind_down(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """Stop listening and end every association in progress (their instances are not
        acknowledged: the senders send them again)."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT + 5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._thread = None
