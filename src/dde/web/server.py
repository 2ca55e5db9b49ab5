"""The FastAPI application over a running router, and the uvicorn server that runs it in a
background thread of the router process.

Request path: uvicorn → errors (JSON, no traceback) → :class:`AuthMiddleware` (401 before
any body is read) → :class:`BodyLimitMiddleware` (413) → the route (CSRF for session
changes) → the router's parts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from dde.config import WebSettings
from dde.web import docs, errors, pages
from dde.web.api import MAX_EXPLAIN_BYTES, endpoints_router, rules_router
from dde.web.api_ledger import instances_router, queue_router
from dde.web.auth import Authenticator, AuthMiddleware, login_router
from dde.web.health import health_router
from dde.web.limits import BodyLimitMiddleware
from dde.web.metrics import WebMetrics
from dde.web.services import WebServices
from dde.web.stow import STOW_PREFIX, stow_router

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/healthz", "/metrics", "/login", "/logout", docs.DOCS_PATH, "/openapi.json")
PUBLIC_PREFIXES = ("/static/", docs.ASSETS_PATH + "/")
DEFAULT_BODY_LIMIT = 1024 * 1024
"""Largest request body except uploads and STOW-RS (``web.max_upload_bytes``)."""
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def build_app(services: WebServices, metrics: WebMetrics, authenticator: Authenticator,
              web: WebSettings) -> FastAPI:
    app = FastAPI(title="Dynamic DICOM Endpoints", version="0.1.0",
                  summary="Live endpoints, rules, upload and the ledger of a DICOM router",
                  docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None)
    app.state.services = services
    app.state.authenticator = authenticator
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, default=DEFAULT_BODY_LIMIT, limits={
        ("POST", "/api/instances"): web.max_upload_bytes,
        ("POST", "/api/route/explain"): MAX_EXPLAIN_BYTES,
    }, prefixes={("POST", STOW_PREFIX): web.max_upload_bytes})
    app.add_middleware(AuthMiddleware, authenticator=authenticator,
                       public_paths=PUBLIC_PATHS, public_prefixes=PUBLIC_PREFIXES)
    metrics.watch(services)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             summary="Prometheus exposition (no token needed)")
    def prometheus() -> Response:
        names = [e.name for e in services.settings.endpoints]
        return Response(metrics.exposition(names), media_type=CONTENT_TYPE_LATEST)

    app.include_router(health_router(services))
    app.include_router(login_router(authenticator))
    app.include_router(endpoints_router(services))
    app.include_router(rules_router(services))
    app.include_router(instances_router(services, web))
    app.include_router(queue_router(services))
    app.include_router(stow_router(services))
    pages.install(app)
    docs.install(app)
    return app


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class WebServer:
    """Serves an ASGI app on ``settings.host:settings.port`` from a background thread.

    The socket is bound in :meth:`start`, so a port in use fails there (``OSError``) and a
    port of 0 is known (:attr:`port`) as soon as ``start`` returns.
    """

    def __init__(self, settings: WebSettings, app: FastAPI) -> None:
        self.settings = settings
        self._app = app
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            return self.settings.port
        return int(self._socket.getsockname()[1])

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot serve HTTP on {host}:{port} (web.port): "
                                     f"{exc.strerror or exc}") from None
        self._socket = sock
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        config = uvicorn.Config(self._app, loop="asyncio", http="h11", lifespan="off",
                                log_config=None, access_log=False, server_header=False,
                                timeout_graceful_shutdown=5)
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.ready.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the HTTP server did not start on {host}:{port}")
        log.info("serving HTTP (API, /metrics, /healthz) on %s:%d", host, self.port)

    def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except Exception:
            log.exception("the HTTP server stopped with an error")

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                log.warning("the HTTP server did not stop within %.0f s", STOP_TIMEOUT)
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._server = None
        self._thread = None
