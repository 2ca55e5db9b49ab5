"""Request body limits, answered as JSON 413 like every other error.

A declared ``Content-Length`` over the limit is refused before the application runs; a
body that turns out longer while it is read (chunked, or a lying length) stops the read
with an ``HTTPException(413)`` that the error handlers turn into the JSON answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dde.web.errors import error_response


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


class BodyLimitMiddleware:
    """``limits`` maps (method, path) to its limit, ``prefixes`` (method, path) to the limit
    of that path and every path under it (``/dicom-web/studies/{uid}``); other requests get
    ``default``."""

    def __init__(self, app: ASGIApp, default: int,
                 limits: Mapping[tuple[str, str], int] | None = None,
                 prefixes: Mapping[tuple[str, str], int] | None = None) -> None:
        self.app = app
        self.default = default
        self.limits = dict(limits or {})
        self.prefixes = dict(prefixes or {})

    def limit_of(self, method: str, path: str) -> int:
        limit = self.limits.get((method, path))
        if limit is not None:
            return limit
        for (prefix_method, prefix), value in self.prefixes.items():
            if method == prefix_method and (path == prefix or path.startswith(prefix + "/")):
                return value
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = error_response(413, "payload_too_large", _too_large(limit),
                                      headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
