"""Ledger routes: upload and find instances, the delivery queue, statistics.

Documents have the shapes the CLI prints (:mod:`dde.reports`):
``GET /api/instances/{uid}`` is ``dde where --json``, ``GET /api/queue`` is
``dde queue --json``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from dde.config import WebSettings
from dde.reports import queue_document, summary_document, where_document
from dde.store.states import DeliveryState
from dde.web.auth import require_user
from dde.web.errors import ApiError, conflict, not_found
from dde.web.schemas import error_responses
from dde.web.schemas_ledger import (
    InstanceDocument,
    QueueDocument,
    RetryAnswer,
    RetryFailedAnswer,
    SearchPage,
    StatsDocument,
    UploadResult,
)
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


SEARCH_PARAMETERS = ("patient_id", "accession", "study_uid", "since", "limit", "offset")


def only_parameters(*known: str) -> Callable[[Request], None]:
    """A route dependency: 400 for a query parameter the route does not know (a typo such
    as ``patientid`` would otherwise silently search everything)."""
    def check(request: Request) -> None:
        unknown = sorted({k for k in request.query_params if k not in known})
        if unknown:
            raise ApiError(400, "bad_request",
                           f"unknown query parameter: {', '.join(unknown)}; "
                           f"known: {', '.join(known)}")
    return check


def instances_router(services: WebServices, web: WebSettings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["instances"], dependencies=[Depends(require_user)],
                       responses=error_responses(401, 500))

    @router.post("/instances", form_limits={"max_files": MAX_UPLOAD_FILES},
                 response_model=UploadResult,
                 summary="Upload DICOM files (or zips of them) through the durable receive "
                 "path; per-file results",
                 responses=error_responses(403, 422, described={
                     400: "An empty file or zip, or no file: nothing was stored",
                     413: "Over web.max_upload_bytes, or a zip that expands too far: "
                          "nothing was stored",
                     415: "not_dicom (with files: an uploaded file, not a zip entry, that "
                          "is not DICOM), or a zip that is invalid or encrypted: "
                          "nothing was stored"}))
    def upload(
        request: Request,
        file: Annotated[list[UploadFile], File(description="Part-10 files or zips of them; "
                                                           "repeat the field for many")],
    ) -> dict[str, Any]:
        settings = services.settings
        client = request.client.host if request.client is not None else None
        return take_upload(file, web.max_upload_bytes, services.pipeline,
                           settings.receiver.ae_title, client)

    @router.get("/instances/{sop_instance_uid}", response_model=InstanceDocument,
                summary="Where one instance went (as `dde where --json`)",
                responses=error_responses(422, described={
                    404: "No instance with that SOP Instance UID in the ledger"}))
    def where(sop_instance_uid: str, show_phi: Annotated[bool, Query(
            description="Show the old values of edited elements (patient data) instead "
                        "of (hidden)")] = False) -> dict[str, Any]:
        records = services.ledger.operators.where(sop_instance_uid)
        if not records:
            raise not_found(f"no instance with SOP Instance UID {sop_instance_uid} "
                            "in the ledger")
        return where_document(records, show_phi)

    @router.get("/instances", response_model=SearchPage,
                summary="Search the ledger (exact matches), newest first",
                dependencies=[Depends(only_parameters(*SEARCH_PARAMETERS))],
                responses=error_responses(422, described={
                    400: "An unknown query parameter"}))
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
    router = APIRouter(prefix="/api", tags=["queue"], dependencies=[Depends(require_user)],
                       responses=error_responses(401, 500))

    def wake_all() -> None:
        services.dispatcher.wake([e.name for e in services.settings.endpoints])

    @router.get("/queue", response_model=QueueDocument,
                summary="What waits or failed, per endpoint (as `dde queue --json`)",
                responses=error_responses(422))
    def queue(limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> dict[str, Any]:
        ledger = services.ledger
        return queue_document(ledger.operators.state_counts(), ledger.operators.queue(limit=limit))

    @router.post("/deliveries/{delivery_id}/retry", response_model=RetryAnswer,
                 summary="Send a failed (or waiting) delivery again, now",
                 responses=error_responses(403, 422, described={
                     404: "No delivery with that id",
                     409: "The delivery is delivered already"}))
    def retry(delivery_id: int) -> dict[str, Any]:
        previous = services.ledger.operators.retry(delivery_id)
        if previous is None:
            raise not_found(f"no delivery with id {delivery_id}")
        if previous is DeliveryState.DELIVERED:
            raise conflict(f"delivery {delivery_id} is already delivered")
        wake_all()
        return {"id": delivery_id, "previous": previous.value, "state": "pending"}

    @router.post("/queue/retry-failed", response_model=RetryFailedAnswer,
                 summary="Send every failed delivery again, now",
                 responses=error_responses(403))
    def retry_failed() -> dict[str, Any]:
        count = services.ledger.operators.retry_failed()
        wake_all()
        return {"requeued": count}

    @router.get("/stats", tags=["stats"], response_model=StatsDocument,
                summary="Per endpoint: health, load, queue, delivered/failed, per-minute "
                "throughput; received per minute",
                responses=error_responses(422))
    def stats(minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 15) -> dict[str, Any]:
        return stats_document(services, services.settings, minutes)

    return router
