"""Every error the HTTP side answers is JSON: ``{"error": CODE, "detail": TEXT, ...}``.

``error`` is a stable machine word (``not_found``, ``conflict``, …), ``detail`` a sentence
for people; some errors add fields (``line`` of an invalid rule, ``files`` of a refused
upload). Unexpected exceptions are logged with their traceback and answered as a bare 500:
no stack trace, path or value ever reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

ERROR_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise from a route to answer ``status`` with this error document."""

    def __init__(self, status: int, error: str, detail: str,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra


def error_code(status: int) -> str:
    return ERROR_CODES.get(status, "client_error" if status < 500 else "server_error")


def error_response(status: int, error: str, detail: str,
                   headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status,
                        headers=dict(headers or {}))


def not_found(detail: str) -> ApiError:
    return ApiError(404, "not_found", detail)


def conflict(detail: str) -> ApiError:
    return ApiError(409, "conflict", detail)


def validation_detail(errors: Any) -> tuple[str, list[dict[str, Any]]]:
    """A one-line summary and the list of problems (location and message only: never the
    input, which may be an uploaded file or a secret)."""
    problems = [{"loc": [str(part) for part in error.get("loc", ())],
                 "msg": str(error.get("msg", "invalid"))} for error in errors]
    summary = "; ".join(f"{'.'.join(p['loc']) or '(body)'}: {p['msg']}" for p in problems)
    return summary or "invalid request", problems


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail, exc.headers, **exc.extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, error_code(exc.status_code), str(exc.detail),
                          exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail, problems = validation_detail(exc.errors())
    return error_response(422, "validation_error", detail, problems=problems)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error answering %s %s", request.method, request.url.path,
              exc_info=exc)
    return error_response(500, "internal_error", "internal error; the router log has details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
