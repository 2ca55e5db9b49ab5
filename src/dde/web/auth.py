"""Who may use the API: one token, sent as a bearer header or exchanged for a session.

- The token is ``$DDE_API_TOKEN`` if set, else the content of ``$DDE_HOME/api-token``,
  generated (256 random bits, mode 0600) at the first start. ``dde token`` prints it.
- ``Authorization: Bearer TOKEN`` authenticates one request; no CSRF check applies.
- The token has at least :data:`MIN_TOKEN_LENGTH` characters: a shorter
  ``$DDE_API_TOKEN`` (or token file) is refused at start, naming it.
- ``POST /login`` with the token sets a signed session cookie (HttpOnly, SameSite=Strict)
  and returns a CSRF token (also in the readable ``dde_csrf`` cookie). A change (POST, PUT,
  PATCH, DELETE) authenticated by the cookie must echo it in ``X-CSRF-Token`` or in a
  ``csrf_token`` form field; else 403. ``POST /logout`` is such a change.
- Sessions are also held by the router (in memory): logout ends one there, so that its
  cookie and CSRF token are worthless afterwards; a restart ends them all.
- Failed logins are logged (WARNING, the source address, never what was sent) and limited
  per source address (:class:`LoginLimiter`): past the limit, 429 with ``Retry-After``.
- Authentication happens in :class:`AuthMiddleware`, before any body is read: an anonymous
  client cannot make the router spool a large upload. ``/healthz``, ``/metrics``, the
  OpenAPI pages and ``/login`` are public.

Tokens are compared with :func:`hmac.compare_digest` and never logged nor returned.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import FormData
from starlette.types import ASGIApp, Receive, Scope, Send

from dde.config import ConfigError, Home
from dde.web.errors import ApiError, error_response
from dde.web.schemas import LoggedOut, LoginSession, error_responses

log = logging.getLogger(__name__)

TOKEN_ENVIRONMENT = "DDE_API_TOKEN"
TOKEN_FILE_NAME = "api-token"
SESSION_COOKIE = "dde_session"
CSRF_COOKIE = "dde_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_TOKEN_LENGTH = 1024
MIN_TOKEN_LENGTH = 16
LOGIN_FAILURES = 10
"""Failed logins allowed from one source address within LOGIN_WINDOW_SECONDS."""
LOGIN_WINDOW_SECONDS = 300.0
MAX_SESSIONS = 10_000
"""Live sessions held; beyond it the oldest ends (a login never fails for it)."""
MAX_TRACKED_ADDRESSES = 10_000


class TokenError(ConfigError):
    """The API token cannot be read or created; the message says what to do."""


# -- the token ---------------------------------------------------------------------------
def token_file(home: Home) -> Path:
    return home.root / TOKEN_FILE_NAME


def token_location(home: Home) -> str:
    """Where the token comes from, for messages (never the token itself)."""
    if os.environ.get(TOKEN_ENVIRONMENT):
        return f"${TOKEN_ENVIRONMENT}"
    return str(token_file(home))


def load_token(home: Home, create: bool = True) -> str:
    """The API token: ``$DDE_API_TOKEN``, else the token file (created when absent)."""
    from_environment = os.environ.get(TOKEN_ENVIRONMENT)
    if from_environment is not None:
        token = from_environment.strip()
        if not token:
            raise TokenError(f"${TOKEN_ENVIRONMENT} is set but empty")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenError(f"${TOKEN_ENVIRONMENT} is too weak: use at least "
                             f"{MIN_TOKEN_LENGTH} characters (e.g. `openssl rand -hex 32`), "
                             f"or unset it to have a token generated")
        return token
    path = token_file(home)
    try:
        return _read_token_file(path)
    except FileNotFoundError:
        if not create:
            raise TokenError(f"no API token yet at {path}: start the router once") from None
    return _create_token_file(path)


def _create_token_file(path: Path) -> str:
    """Write a new token to a private temporary file, then link it into place: a reader
    never sees a half-written token, and a concurrent creator's token wins consistently."""
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process created it first: use theirs
            return _read_token_file(path)
    except OSError as exc:
        raise TokenError(f"cannot create {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("generated a new API token in %s", path)
    return token


def _read_token_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s was readable by others; its mode is now 0600", path)
        token = path.read_text().strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read {path}: {exc}") from None
    if not token:
        raise TokenError(f"{path} is empty: delete it to have a new token generated")
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"the token in {path} is too weak (fewer than {MIN_TOKEN_LENGTH} "
                         "characters): delete the file to have a new one generated")
    return token


# -- who is asking -----------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    user: str
    via: Literal["bearer", "session"]
    csrf: str | None = None
    """The session's CSRF token (session only)."""
    session_id: str | None = None
    """The session's id (session only): what logout ends."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LoginLimiter:
    """Failed logins per source address: more than ``failures`` within ``window`` seconds
    and that address is refused (even with the right token) until the oldest failure is
    ``window`` seconds old. A successful login forgets the address's failures."""

    def __init__(self, failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._seen.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._seen[address]
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        with self._lock:
            now = self._clock()
            times = self._recent(address, now)
            if len(times) < self.failures:
                return None
            return max(1, int(times[0] + self.window - now + 0.999))

    def failed(self, address: str) -> int:
        """Record a failure; the failures of ``address`` in the window now."""
        with self._lock:
            now = self._clock()
            times = self._recent(address, now)
            if address not in self._seen:
                if len(self._seen) >= MAX_TRACKED_ADDRESSES:  # forget the stalest one
                    stalest = min(self._seen, key=lambda a: self._seen[a][-1])
                    del self._seen[stalest]
                self._seen[address] = times
            times.append(now)
            return len(times)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._seen.pop(address, None)


class Authenticator:
    """Checks bearer tokens and signs/verifies session cookies (HMAC-SHA256 with a key
    derived from the token: a new token ends every session). Sessions are also held here,
    so that :meth:`end_session` ends one (and a restart ends them all)."""

    def __init__(self, token: str, session_seconds: float = SESSION_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        if not token:
            raise TokenError("the API token is empty")
        self._token = token.encode()
        self._key = hmac.new(self._token, b"dde-web-session-v1", hashlib.sha256).digest()
        self.session_seconds = session_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, float] = {}
        """Live session ids and when each expires (insertion order: oldest first)."""

    def check_token(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def new_session(self, user: str = "web") -> tuple[str, str]:
        """(cookie value, CSRF token) of a new session."""
        csrf = secrets.token_urlsafe(32)
        session_id = secrets.token_urlsafe(18)
        expires = int(self._clock() + self.session_seconds)
        with self._lock:
            now = self._clock()
            for ended in [s for s, e in self._sessions.items() if e < now]:
                del self._sessions[ended]
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session_id] = expires
        payload = _b64(json.dumps({"u": user, "c": csrf, "s": session_id,
                                   "e": expires}).encode())
        return f"{payload}.{self._sign(payload)}", csrf

    def end_session(self, session_id: str) -> None:
        """Logout: the session's cookie and CSRF token are refused from now on."""
        with self._lock:
            self._sessions.pop(session_id, None)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def session(self, value: str) -> Principal | None:
        payload, _, signature = value.partition(".")
        if not payload or not hmac.compare_digest(signature.encode(),
                                                  self._sign(payload).encode()):
            return None
        try:
            data: Any = json.loads(_unb64(payload))
            user, csrf, expires = str(data["u"]), str(data["c"]), float(data["e"])
            session_id = str(data["s"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < self._clock():
            return None
        with self._lock:
            if session_id not in self._sessions:  # ended by logout, or before a restart
                return None
        return Principal(user, "session", csrf, session_id)

    def authenticate(self, authorization: str | None,
                     cookies: dict[str, str]) -> Principal | None:
        """Bearer header first (a wrong one is refused, not passed over); then the cookie."""
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.check_token(value.strip()):
                return Principal("api", "bearer")
            return None
        cookie = cookies.get(SESSION_COOKIE)
        return self.session(cookie) if cookie else None


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized",
                    "send Authorization: Bearer TOKEN (see `dde token`) or log in",
                    headers={"WWW-Authenticate": "Bearer"})


class AuthMiddleware:
    """Authenticates every HTTP request before the application reads its body; answers
    401 for a non-public path without valid credentials."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator,
                 public_paths: Iterable[str] = (), public_prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)

    def is_public(self, path: str) -> bool:
        return path in self.public_paths or path.startswith(self.public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        principal = self.authenticator.authenticate(request.headers.get("authorization"),
                                                    dict(request.cookies))
        scope.setdefault("state", {})["principal"] = principal
        if principal is None and not self.is_public(scope["path"]):
            denied = unauthorized()
            response = error_response(denied.status, denied.error, denied.detail,
                                      denied.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def principal_of(request: Request) -> Principal | None:
    value = getattr(request.state, "principal", None)
    return value if isinstance(value, Principal) else None


BEARER = HTTPBearer(auto_error=False, scheme_name="API token",
                    description="The router's API token (`dde token` prints it).")


async def require_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Principal:
    """Route dependency: an authenticated principal; for a session-authenticated change,
    the CSRF token must be echoed (header or form field). (``credentials`` only declares
    the scheme in the OpenAPI document: :class:`AuthMiddleware` has checked them.)"""
    principal = principal_of(request)
    if principal is None:
        raise unauthorized()
    await check_csrf(request, principal)
    return principal


async def check_csrf(request: Request, principal: Principal) -> None:
    """403 unless a session-authenticated change echoes the session's CSRF token."""
    if principal.via == "bearer" or request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(FORM_TYPES):
        field = (await request.form()).get(CSRF_FIELD)
        sent = field if isinstance(field, str) else None
    if sent is None or principal.csrf is None or not hmac.compare_digest(
            sent.encode(), principal.csrf.encode()):
        raise ApiError(403, "csrf_failed",
                       f"a change made with the session cookie needs the {CSRF_HEADER} header "
                       f"(or the {CSRF_FIELD} form field) given at login")


# -- login and logout --------------------------------------------------------------------
def _safe_next(value: str | None) -> str | None:
    """A same-site path to go to after login, or None (no open redirects)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else None


LOGIN_JSON = {"type": "object", "properties": {"token": {"type": "string"}},
              "required": ["token"]}
LOGIN_FORM = {"type": "object", "properties": {
    "token": {"type": "string"},
    "next": {"type": "string", "description": "A path of this site to go to after login"}},
    "required": ["token"]}


def login_router(authenticator: Authenticator,
                 limiter: LoginLimiter | None = None) -> APIRouter:
    router = APIRouter(tags=["auth"])
    limiter = limiter or LoginLimiter()

    @router.post("/login", response_model=LoginSession,
                 summary="Exchange the API token for a session cookie",
                 responses={303: {"description": "Logged in from a form with `next`: go there"},
                            **error_responses(400, 415, described={
                                401: "Wrong or missing token",
                                429: "Too many failed logins from this address: try again "
                                     "after Retry-After seconds"})},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": LOGIN_JSON},
                     "application/x-www-form-urlencoded": {"schema": LOGIN_FORM}}}})
    async def login(request: Request) -> Response:
        """Body: JSON ``{"token": ...}`` or a form with ``token`` (and optionally ``next``,
        a path to redirect to). Answers the CSRF token to echo on changes."""
        address = request.client.host if request.client is not None else "unknown"
        wait = limiter.retry_after(address)
        if wait is not None:
            log.warning("login from %s refused: too many failed logins", address)
            raise ApiError(429, "too_many_requests",
                           f"too many failed logins from this address; try again in {wait} s",
                           headers={"Retry-After": str(wait)})
        token, next_path = await _login_fields(request)
        if token is None or not authenticator.check_token(token):
            failures = limiter.failed(address)
            log.warning("failed login from %s (%d in the last %.0f s)", address, failures,
                        limiter.window)
            raise ApiError(401, "unauthorized", "wrong or missing token")
        limiter.succeeded(address)
        cookie, csrf = authenticator.new_session()
        response: Response
        if next_path is not None:
            response = RedirectResponse(next_path, status_code=303)
        else:
            response = JSONResponse({"csrf_token": csrf,
                                     "expires_in": int(authenticator.session_seconds)})
        secure = request.url.scheme == "https"
        age = int(authenticator.session_seconds)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=age, httponly=True,
                            samesite="strict", secure=secure, path="/")
        response.set_cookie(CSRF_COOKIE, csrf, max_age=age, httponly=False,
                            samesite="strict", secure=secure, path="/")
        return response

    @router.post("/logout", response_model=LoggedOut,
                 summary="End the session (on the router too; clears the cookies)",
                 responses=error_responses(described={
                     403: f"A session without its {CSRF_HEADER} header"}))
    async def logout(request: Request) -> Response:
        """With the session cookie, needs the CSRF token like every change; the session's
        cookie and CSRF token are refused afterwards. Without a session: nothing to end."""
        principal = principal_of(request)
        if principal is not None and principal.via == "session":
            await check_csrf(request, principal)
            if principal.session_id is not None:
                authenticator.end_session(principal.session_id)
        response = JSONResponse({"status": "logged out"})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        response.delete_cookie(CSRF_COOKIE, path="/", samesite="strict")
        return response

    return router


async def _login_fields(request: Request) -> tuple[str | None, str | None]:
    content_type = request.headers.get("content-type", "")
    token: object = None
    next_path: object = None
    if content_type.startswith(FORM_TYPES):
        form: FormData = await request.form(max_files=0, max_fields=8)
        token, next_path = form.get("token"), form.get("next")
    elif content_type.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "bad_request", "the body is not valid JSON") from None
        if isinstance(body, dict):
            token = body.get("token")
    else:
        raise ApiError(415, "unsupported_media_type",
                       "send the token as JSON {\"token\": ...} or as a form field")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None, None
    return token.strip(), _safe_next(next_path if isinstance(next_path, str) else None)
