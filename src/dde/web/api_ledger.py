"""Ledger routes: upload and find instances, the delivery queue, statistics.

Documents have the shapes the CLI prints (:mod:`dde.delivery.reports`):
``GET /api/instances/{uid}`` is ``dde where --json``, ``GET /api/queue`` is
``dde queue --json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from dde.config import WebSettings
from dde.reports import queue_document, summary_document, where_document
from dde.store.states import DeliveryState
from dde.web.auth import require_user
from dde.web.errors import ApiError, conflict, not_found
from dde.web.services import WebServices
from dde.web.stats import stats_document
from dde.web.upload import take_upload

MAX_PAGE = 500
MAX_UPLOAD_FILES = 10_000


def parse_since(value: str | None) -> float | None:
    """Seconds since the epoch, or an ISO 8601 date/time (local time when no offset)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ApiError(422, "validation_error",
                       "since: give seconds since the epoch or an ISO 8601 date/time, "
                       "e.g. 2026-01-31T08:00") from None


def instances_router(services: WebServices, web: WebSettings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["instances"], dependencies=[Depends(require_user)])

    @router.post("/instances", form_limits={"max_files": MAX_UPLOAD_FILES},
                 summary="Upload DICOM files (or zips of them) through the durable receive "
                 "path; per-file results")
    def upload(
        request: Request,
        file: Annotated[list[UploadFile], File(description="Part-10 files or zips of them; "
                                                           "repeat the field for many")],
    ) -> dict[str, Any]:
        settings = services.settings
        client = request.client.host if request.client is not None else None
        return take_upload(file, web.max_upload_bytes, services.pipeline,
                           settings.receiver.ae_title, client)

    @router.get("/instances/{sop_instance_uid}",
                summary="Where one instance went (as `dde where --json`)")
    def where(sop_instance_uid: str) -> dict[str, Any]:
        records = services.ledger.operators.where(sop_instance_uid)
        if not records:
            raise not_found(f"no instance with SOP Instance UID {sop_instance_uid} "
                            "in the ledger")
        return where_document(records)

    @router.get("/instances", summary="Search the ledger (exact matches), newest first")
    def search(
        patient_id: Annotated[str | None, Query(max_length=64)] = None,
        accession: Annotated[str | None, Query(max_length=64)] = None,
        study_uid: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[str | None, Query(description="epoch seconds or ISO 8601")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        total, found = services.ledger.operators.search(
            patient_id=patient_id or None, accession_number=accession or None,
            study_instance_uid=study_uid or None, since=parse_since(since),
            limit=limit, offset=offset)
        return {"total": total, "limit": limit, "offset": offset,
                "instances": [summary_document(s) for s in found]}

    return router


def queue_router(services: WebServices) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["queue"], dependencies=[Depends(require_user)])

    def wake_all() -> None:
        services.dispatcher.wake([e.name for e in services.settings.endpoints])

    @router.get("/queue", summary="What waits or failed, per endpoint (as `dde queue --json`)")
    def queue(limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> dict[str, Any]:
        ledger = services.ledger
        return queue_document(ledger.operators.state_counts(), ledger.operators.queue(limit=limit))

    @router.post("/deliveries/{delivery_id}/retry",
                 summary="Send a failed (or waiting) delivery again, now")
    def retry(delivery_id: int) -> dict[str, Any]:
        previous = services.ledger.operators.retry(delivery_id)
        if previous is None:
            raise not_found(f"no delivery with id {delivery_id}")
        if previous is DeliveryState.DELIVERED:
            raise conflict(f"delivery {delivery_id} is already delivered")
        wake_all()
        return {"id": delivery_id, "previous": previous.value, "state": "pending"}

    @router.post("/queue/retry-failed", summary="Send every failed delivery again, now")
    def retry_failed() -> dict[str, Any]:
        count = services.ledger.operators.retry_failed()
        wake_all()
        return {"requeued": count}

    @router.get("/stats", tags=["stats"], summary="Per endpoint: health, load, queue, "
                "delivered/failed, per-minute throughput; received per minute")
    def stats(minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 15) -> dict[str, Any]:
        return stats_document(services, services.settings, minutes)

    return router
