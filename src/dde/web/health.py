"""``GET /healthz``: liveness and readiness in one answer.

Ready means: the ledger answers a query, the spool folder takes a file, and the DICOM
receiver is listening. 200 ``{"status": "ok", "checks": {...}}``, else 503 with the
failing check's reason (no paths: the route is public).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from dde.store.errors import LedgerError
from dde.web.schemas import HealthReport, HealthUnavailable
from dde.web.services import WebServices


def check_database(services: WebServices) -> str | None:
    try:
        services.ledger.diagnostics.ping()
    except LedgerError as exc:
        return f"the ledger does not answer: {type(exc).__name__}"
    return None


def check_spool(services: WebServices) -> str | None:
    """Create, write and remove a small file in the spool folder (a permission check
    would lie for root or on a read-only mount)."""
    probe = services.spool.root / f".healthz-{uuid.uuid4().hex}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return f"the spool folder is not writable: {exc.strerror or type(exc).__name__}"
    return None


def check_receiver(services: WebServices) -> str | None:
    return None if services.receiver.running else "the DICOM receiver is not listening"


CHECKS = (("database", check_database), ("spool", check_spool), ("receiver", check_receiver))


def readiness(services: WebServices) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {}
    for name, check in CHECKS:
        problem = check(services)
        checks[name] = {"ok": True} if problem is None else {"ok": False, "detail": problem}
    return all(c["ok"] for c in checks.values()), checks


def health_router(services: WebServices) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_model=HealthReport,
                summary="Liveness and readiness (no token needed)",
                responses={503: {"model": HealthUnavailable,
                                 "description": "Not ready: a check failed"}})
    def healthz() -> JSONResponse:
        ok, checks = readiness(services)
        if ok:
            return JSONResponse({"status": "ok", "checks": checks})
        failing = ", ".join(f"{n}: {c['detail']}" for n, c in checks.items() if not c["ok"])
        return JSONResponse({"status": "unavailable", "error": "unavailable",
                             "detail": failing, "checks": checks}, status_code=503,
                            headers={"Cache-Control": "no-store"})

    return router
