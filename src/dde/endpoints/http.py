"""HTTP clients towards a PACS (Orthanc REST, DICOMweb), with credentials and TLS from the
config.

Credentials are HTTP basic (``username`` with ``password`` or ``password_file``) or a bearer
token (``token`` or ``token_file``). A ``*_file`` is read each time a client is made, so a
rotated secret is picked up by the next connection. Secrets never appear in an error
message or a log line: errors name the file and the reason only.
"""

from __future__ import annotations

import ssl
from collections.abc import Generator
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from dde.config import EndpointSettings


class CredentialsError(Exception):
    """The endpoint's secret cannot be read; the message names the file, never its content."""


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` on every request (httpx has basic auth only)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __repr__(self) -> str:  # never show the token, even in a debugger or a traceback
        return "BearerAuth(****)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def _read_secret(path: str, what: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise CredentialsError(f"cannot read the {what} file {path}: {reason}") from None
    if not value:
        raise CredentialsError(f"the {what} file {path} is empty")
    return value


def endpoint_auth(endpoint: EndpointSettings) -> httpx.Auth | None:
    """The endpoint's HTTP credentials, or None; :class:`CredentialsError` when a secret
    file cannot be read."""
    if endpoint.token is not None:
        return BearerAuth(endpoint.token.get_secret_value())
    if endpoint.token_file is not None:
        return BearerAuth(_read_secret(endpoint.token_file, "token"))
    if endpoint.username and endpoint.password is not None:
        return httpx.BasicAuth(endpoint.username, endpoint.password.get_secret_value())
    if endpoint.username and endpoint.password_file is not None:
        return httpx.BasicAuth(endpoint.username, _read_secret(endpoint.password_file,
                                                               "password"))
    return None


def http_client(endpoint: EndpointSettings, timeout: float = 10.0,
                transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """A client with the endpoint's credentials and TLS; ``transport`` replaces the network
    (tests pass an ``httpx.MockTransport``). :class:`CredentialsError` when a secret file
    cannot be read."""
    auth = endpoint_auth(endpoint)
    verify: bool | ssl.SSLContext = endpoint.tls.verify
    if endpoint.tls.ca_file or endpoint.tls.cert_file:
        context = ssl.create_default_context(cafile=endpoint.tls.ca_file)
        if endpoint.tls.cert_file:
            context.load_cert_chain(endpoint.tls.cert_file, endpoint.tls.key_file)
        if not endpoint.tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        verify = context
    return httpx.Client(timeout=httpx.Timeout(timeout), auth=auth, verify=verify,
                        transport=transport)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110 §10.2.3: seconds, or an HTTP
    date), from ``now`` (epoch seconds); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is in GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class KeptClient:
    """A sender's keep-alive HTTP client: made at first use, reused while the queue has
    work, closed on :meth:`release` (the next use makes a new one, with the credentials
    read again)."""

    def __init__(self, endpoint: EndpointSettings, timeout: float,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._transport = transport
        self.current: httpx.Client | None = None

    def get(self) -> httpx.Client:
        """The client (:class:`CredentialsError` when a secret file cannot be read)."""
        if self.current is None:
            self.current = http_client(self._endpoint, timeout=self._timeout,
                                       transport=self._transport)
        return self.current

    def abort(self) -> None:
        """From another thread: close the connection under a request in flight."""
        client = self.current
        if client is not None:
            client.close()

    def release(self) -> None:
        client, self.current = self.current, None
        if client is not None:
            client.close()
