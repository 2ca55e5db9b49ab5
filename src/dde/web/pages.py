"""The console's pages: server-rendered Jinja2 templates (``templates/``, autoescaped) and
plain JavaScript and CSS (``static/``, served from here: no build step, no CDN).

- ``GET /login``: a form that exchanges the token for a session (``POST /login``, in
  :mod:`dde.web.auth`); a wrong token is shown as an error on the form.
- ``/`` (dashboard), ``/endpoints``, ``/rules``, ``/upload``, ``/ledger``: need a session.
  Without one, :class:`PageGate` redirects to ``/login?next=…`` (the API answers 401 JSON).

Pages read through the same functions as the API; their scripts change things only through
the API, echoing the session's CSRF token from ``<meta name="csrf-token">``. Values reach
the page as text: Jinja2 autoescape on the server, ``textContent`` in the scripts, and a
Content-Security-Policy that allows no inline script.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from dde.config import ConfigError, EndpointKind
from dde.config_store import default_rules_text
from dde.endpoints import registry
from dde.reports import iso
from dde.store.states import DeliveryState
from dde.web.auth import SESSION_COOKIE, Authenticator
from dde.web.services import WebServices
from dde.web.stats import stats_document

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")
NAVIGATION = (("/", "dashboard", "Dashboard"), ("/endpoints", "endpoints", "Endpoints"),
              ("/rules", "rules", "Rules"), ("/upload", "upload", "Upload"),
              ("/ledger", "ledger", "Ledger"))
PAGE_PATHS = frozenset(path for path, _, _ in NAVIGATION)
REFRESH_SECONDS = 5
STATS_MINUTES = 15
FAILURES_SHOWN = 20
LEDGER_FIELDS = ("patient_id", "accession", "study_uid", "sop_uid")
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'; form-action 'self'")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def local_path(value: str | None, default: str = "/") -> str:
    """``value`` if it is a path on this site (no scheme, host or ``//``), else ``default``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else default


def _static_version() -> str:
    """A short fingerprint of the static files, appended to their URLs so that a browser
    never runs an old script against a new page after an upgrade."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    version = _static_version()
    environment.globals["static"] = lambda name: f"/static/{name}?v={version}"
    environment.filters["age"] = format_age
    environment.filters["when"] = format_when
    environment.filters["dash"] = lambda value: "—" if value is None or value == "" else value
    return Jinja2Templates(env=environment)


def format_age(seconds: float | None) -> str:
    """``12 s``, ``4 min``, ``2.5 h`` (as the scripts print it); ``—`` for none."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_when(timestamp: float | None) -> str:
    """Local date and time to the second (as the scripts print the API's ISO times)."""
    text = iso(timestamp)
    return "—" if text is None else text[:19].replace("T", " ")


class PageGate:
    """Redirects a page request without a valid session to ``/login?next=…``.

    It runs before :class:`dde.web.auth.AuthMiddleware`, which would answer 401 JSON: right
    for the API, unfriendly for a person opening a bookmark.
    """

    def __init__(self, app: ASGIApp, authenticator: Authenticator,
                 paths: frozenset[str] = PAGE_PATHS) -> None:
        self.app = app
        self.authenticator = authenticator
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
                and scope["path"] in self.paths):
            cookie = Request(scope).cookies.get(SESSION_COOKIE)
            if not cookie or self.authenticator.session(cookie) is None:
                query = scope.get("query_string", b"").decode("latin-1")
                await login_redirect(scope["path"] + (f"?{query}" if query else ""))(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def login_redirect(next_path: str) -> RedirectResponse:
    target = "/login" if next_path == "/" else "/login?" + urlencode({"next": next_path})
    return RedirectResponse(target, status_code=303)


def pages_router(services: WebServices, authenticator: Authenticator) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    templates = _templates()

    def render(request: Request, page: str, title: str, **context: Any) -> Response:
        """``templates/{page}.html`` for the session's user; its CSRF token goes into the
        page's ``<meta name="csrf-token">`` for the scripts to echo."""
        cookie = request.cookies.get(SESSION_COOKIE)
        session = authenticator.session(cookie) if cookie else None
        if session is None or session.csrf is None:  # expired since PageGate looked
            query = request.url.query
            return login_redirect(request.url.path + (f"?{query}" if query else ""))
        settings = services.settings
        response = templates.TemplateResponse(request, f"{page}.html", {
            "page": page, "title": title, "csrf": session.csrf, "nav": NAVIGATION,
            "ae_title": settings.receiver.ae_title, "refresh_seconds": REFRESH_SECONDS,
            **context})
        response.headers.update(PAGE_HEADERS)
        return response

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request,
                   next_path: Annotated[str | None, Query(alias="next")] = None) -> Response:
        target = local_path(next_path)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and authenticator.session(cookie) is not None:
            return RedirectResponse(target, status_code=303)
        response = templates.TemplateResponse(request, "login.html", {
            "title": "Log in", "next": target})
        response.headers.update(PAGE_HEADERS)
        return response

    @router.get("/", response_class=HTMLResponse)
    def dashboard(request: Request) -> Response:
        settings = services.settings
        stats = stats_document(services, settings, STATS_MINUTES)
        failures = services.ledger.operators.queue(states=(DeliveryState.FAILED,),
                                                   limit=FAILURES_SHOWN)
        receiver = services.receiver
        failed_total = sum(e["failed"] for e in stats["endpoints"])
        ports = receiver.ports
        more_receivers = [(r.name, r.settings.ae_title, ports.get(r.name, r.settings.port))
                          for r in settings.receiving_aes()[1:]]
        return render(request, "dashboard", "Dashboard", stats=stats, failures=failures,
                      failed_total=failed_total, receiver_running=receiver.running,
                      receiver_port=receiver.port, more_receivers=more_receivers,
                      minutes=STATS_MINUTES)

    @router.get("/endpoints", response_class=HTMLResponse)
    def endpoints(request: Request) -> Response:
        settings = services.settings
        rows = registry.describe(settings, services.ledger)
        groups = sorted({g for e in settings.endpoints for g in e.groups} | {"storage"})
        return render(request, "endpoints", "Endpoints", endpoints=rows,
                      kinds=[k.value for k in EndpointKind], groups=groups)

    @router.get("/rules", response_class=HTMLResponse)
    def rules(request: Request) -> Response:
        settings = services.settings
        problem: str | None = None
        names: list[str] = []
        mirror: list[str] = []
        text = services.store.rules_text(settings)
        try:
            ruleset = services.store.ruleset(settings)
            names, mirror = [r.name for r in ruleset.rules], list(ruleset.mirror)
        except ConfigError as exc:
            problem = str(exc)
        return render(request, "rules", "Rules",
                      text=text if text is not None else default_rules_text(settings),
                      default=text is None, rule_names=names, mirror=mirror, problem=problem,
                      endpoint_names=[e.name for e in settings.endpoints])

    @router.get("/upload", response_class=HTMLResponse)
    def upload(request: Request) -> Response:
        return render(request, "upload", "Upload",
                      max_upload_bytes=services.settings.web.max_upload_bytes)

    @router.get("/ledger", response_class=HTMLResponse)
    def ledger(request: Request) -> Response:
        query = {f: request.query_params.get(f, "").strip()[:128] for f in LEDGER_FIELDS}
        return render(request, "ledger", "Ledger", query=query)

    return router


def install(app: FastAPI) -> None:
    """Add the pages, their static files and the login redirect to the app that
    :func:`dde.web.server.build_app` made (its ``state`` holds the services and the
    authenticator)."""
    services: WebServices = app.state.services
    authenticator: Authenticator = app.state.authenticator
    app.include_router(pages_router(services, authenticator))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(PageGate, authenticator=authenticator)
