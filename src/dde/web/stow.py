"""DICOMweb in: STOW-RS (PS3.18 §10.5), ``POST /dicom-web/studies[/{StudyInstanceUID}]`` with
a ``multipart/related; type="application/dicom"`` body of Part-10 files, through the same
durable receive path as C-STORE (:meth:`IngestPipeline.ingest`: routing rules, study pins,
refusals with the same statuses).

The body is streamed (:mod:`dde.web.multipart_related`, python-multipart's parser): each
part is written into its spool file as it arrives (:mod:`dde.web.stow_parts`), so memory
stays bounded whatever the size of a part; the parsing and the writes run in the thread
pool, a megabyte at a time, never on the event loop. Only a well-formed body is ingested:
a body that breaks off, is malformed, goes over ``web.max_upload_bytes`` (413) or over
:data:`MAX_STOW_PARTS` parts (413), or has a part of another media type than
``application/dicom`` (415: metadata and bulk data are not taken) stores nothing, and its
files are removed. Then each part is ingested in turn (fsync, then the ledger commit), and
the answer — the acknowledgement of every instance at once — is sent only after the last
commit. A sender therefore never reads success for an instance that is not durable; an
instance ingested before the connection dropped stays stored (as after a C-STORE whose
response was lost), and a sender that sends it again gets a second ledger row, as with
C-STORE.

The answer is the Store Instances Response Module (PS3.18 Annex I) as
``application/dicom+json``: 200 when every instance was stored, 202 when some failed, 409
when none was stored (400 for a malformed body or one without a part), with a Referenced
SOP Sequence (0008,1199) of the stored instances and a Failed SOP Sequence (0008,1198) with
the Failure Reason (0008,1197) of each failed one: the DIMSE status a C-STORE sender would
have got (0xA700 out of resources, 0xC000 cannot understand, 0xC001 no route, 0xA900 SOP
Instance UID of the dataset differs from its file meta, or Study Instance UID not the one
of the URL). A part that is not a Part-10 file is listed as failed with 0xC000 and no UIDs.
Retrieve URL (0008,1190), Type 2, is sent empty at both levels: the router does not serve
WADO-RS, and the PACS an instance will be retrievable from is not known when it is
acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from dde.dicom import status as dimse
from dde.receiving.ingest import Incoming, IngestPipeline
from dde.web.auth import require_user
from dde.web.errors import ApiError
from dde.web.multipart_related import (
    MultipartError,
    RelatedReader,
    checked_boundary,
    media_type,
)
from dde.web.schemas import error_responses
from dde.web.services import WebServices
from dde.web.stow_parts import (
    DICOM_MEDIA_TYPE,
    DicomPartWriter,
    ReceivedPart,
    TooManyParts,
    UnsupportedPart,
)

log = logging.getLogger(__name__)

STOW_CALLING_AET = "STOW_RS"
"""The calling AE title of instances received by STOW-RS (ledger, ``dde where``, rules)."""
STOW_PREFIX = "/dicom-web/studies"
MAX_STOW_PARTS = 10_000
FEED_BYTES = 1024 * 1024
"""Body bytes gathered before the thread pool parses and writes them."""
DICOM_JSON = "application/dicom+json"
MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
"""A DICOMDIR describes files on a medium; it is not an instance to route."""

# Store Instances Response Module (PS3.18 Table I.1-1), DICOM JSON tags
RETRIEVE_URL = "00081190"
FAILURE_REASON = "00081197"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"


@dataclass(frozen=True)
class Outcome:
    """What became of one part: stored (``failure_reason`` None) or not, and why."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure_reason: int | None
    detail: str


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _reference(outcome: Outcome) -> dict[str, Any]:
    item = {REFERENCED_SOP_CLASS_UID: _uid(outcome.sop_class_uid),
            REFERENCED_SOP_INSTANCE_UID: _uid(outcome.sop_instance_uid)}
    if outcome.failure_reason is None:
        item[RETRIEVE_URL] = {"vr": "UR"}
    else:
        item[FAILURE_REASON] = {"vr": "US", "Value": [outcome.failure_reason]}
    return dict(sorted(item.items()))


def response_document(outcomes: Sequence[Outcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Store Instances Response Module of these outcomes."""
    stored = [o for o in outcomes if o.failure_reason is None]
    failed = [o for o in outcomes if o.failure_reason is not None]
    document: dict[str, Any] = {RETRIEVE_URL: {"vr": "UR"}}
    if failed:
        document[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_reference(o) for o in failed]}
    if stored:
        document[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ",
                                             "Value": [_reference(o) for o in stored]}
    status = 200 if not failed else 202 if stored else 409
    return status, document


def store_parts(parts: Sequence[ReceivedPart], pipeline: IngestPipeline, called_aet: str,
                source_ip: str | None, study_instance_uid: str | None) -> list[Outcome]:
    """Each received part through the durable receive path, in order; a part's file is the
    pipeline's from its ingest on (kept as the spool file, or removed when refused)."""
    outcomes: list[Outcome] = []
    done = 0
    try:
        for part in parts:
            outcomes.append(_store_part(part, pipeline, called_aet, source_ip,
                                        study_instance_uid))
            done += 1
    finally:
        for part in parts[done + 1:]:  # only after an unexpected error: never ingested
            if part.path is not None:
                part.path.unlink(missing_ok=True)
    return outcomes


def _store_part(part: ReceivedPart, pipeline: IngestPipeline, called_aet: str,
                source_ip: str | None, study_instance_uid: str | None) -> Outcome:
    meta = part.meta
    if meta is None or part.path is None:
        return Outcome(None, None, dimse.CANNOT_UNDERSTAND,
                       part.problem or "not a DICOM Part-10 file")
    if meta.sop_class_uid == MEDIA_DIRECTORY_STORAGE:
        part.path.unlink(missing_ok=True)
        return Outcome(meta.sop_class_uid, meta.sop_instance_uid,
                       dimse.SOP_CLASS_NOT_SUPPORTED, "a DICOMDIR, not an instance")
    result = pipeline.ingest(Incoming(
        dataset=b"", dataset_file=part.path, stream_error=part.write_error,
        transfer_syntax_uid=meta.transfer_syntax_uid, sop_class_uid=meta.sop_class_uid,
        sop_instance_uid=meta.sop_instance_uid, calling_aet=STOW_CALLING_AET,
        called_aet=called_aet, source_ip=source_ip, started=part.started,
        study_instance_uid=study_instance_uid))
    return Outcome(meta.sop_class_uid, meta.sop_instance_uid,
                   None if result.ok else result.status, result.detail)


def check_content_type(value: str | None) -> bytes:
    """The boundary of a STOW-RS body of Part-10 files; 415 or 400 (JSON) otherwise."""
    kind, parameters = media_type(value or "")
    wanted = f'multipart/related; type="{DICOM_MEDIA_TYPE}"'
    if kind != "multipart/related":
        raise ApiError(415, "unsupported_media_type",
                       f"send the instances as {wanted} (PS3.18 STOW-RS), not "
                       f"{kind or 'a body without Content-Type'}")
    root = parameters.get("type", "").strip().lower()
    if root != DICOM_MEDIA_TYPE:
        raise ApiError(415, "unsupported_media_type",
                       f"only Part-10 instances are taken: {wanted}; metadata and bulk "
                       f"data ({root or 'no type parameter'}) are not")
    try:
        return checked_boundary(parameters.get("boundary"))
    except MultipartError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


class _SpoolPaths:
    """New part files: prepared spool files, or paths in the incoming folder."""

    def __init__(self, services: WebServices) -> None:
        self._spool = services.spool
        self._made_incoming = False

    def __call__(self) -> Path:
        path = self._spool.prepared.take()
        if not self._made_incoming and path.parent == self._spool.incoming_dir:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._made_incoming = True
        return path


async def receive_parts(request: Request, writer: DicomPartWriter, boundary: bytes) -> None:
    """Read the whole body into ``writer``'s files; on any failure remove them and raise
    (an :class:`ApiError`, or what stopped the read: the body limit, a disconnect)."""
    reader = RelatedReader(boundary, writer)
    pending: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= FEED_BYTES:
                await run_in_threadpool(reader.feed, b"".join(pending))
                pending, size = [], 0
        if pending:
            await run_in_threadpool(reader.feed, b"".join(pending))
        reader.finish()
    except MultipartError as exc:
        writer.discard()
        raise ApiError(400, "bad_request", f"{exc}; nothing was stored") from None
    except UnsupportedPart as exc:
        writer.discard()
        raise ApiError(415, "unsupported_media_type",
                       f"a part of type {exc}: only {DICOM_MEDIA_TYPE} parts (Part-10 files) "
                       "are taken; nothing was stored") from None
    except TooManyParts as exc:
        writer.discard()
        raise ApiError(413, "payload_too_large", f"{exc}; nothing was stored") from None
    except BaseException:
        writer.discard()
        raise


def stow_router(services: WebServices) -> APIRouter:
    router = APIRouter(prefix="/dicom-web", tags=["dicomweb"],
                       dependencies=[Depends(require_user)],
                       responses=error_responses(400, 401, 403, 413, 415, 422, 500))
    answers: dict[int | str, dict[str, Any]] = {
        status: {"description": text, "content": {DICOM_JSON: {"schema": {"type": "object"}}}}
        for status, text in ((200, "Every instance stored (Referenced SOP Sequence)"),
                             (202, "Some stored, some failed (both sequences)"),
                             (409, "None stored (Failed SOP Sequence with Failure Reasons)"))}
    body = {"requestBody": {"required": True, "content": {
        'multipart/related; type="application/dicom"': {
            "schema": {"type": "string", "format": "binary"}}}}}

    async def store(request: Request, study_instance_uid: str | None) -> Response:
        boundary = check_content_type(request.headers.get("content-type"))
        writer = DicomPartWriter(_SpoolPaths(services), STOW_CALLING_AET, MAX_STOW_PARTS)
        await receive_parts(request, writer, boundary)
        if not writer.parts:
            raise ApiError(400, "bad_request", "the body has no part: no instance to store")
        client = request.client.host if request.client is not None else None
        outcomes = await run_in_threadpool(
            store_parts, writer.parts, services.pipeline,
            services.settings.receiver.ae_title, client, study_instance_uid)
        status, document = response_document(outcomes)
        stored = sum(o.failure_reason is None for o in outcomes)
        log.info("STOW-RS from %s: %d of %d instance(s) stored", client, stored,
                 len(outcomes))
        return JSONResponse(document, status_code=status, media_type=DICOM_JSON)

    @router.post("/studies", response_class=Response, responses=answers, openapi_extra=body,
                 summary="STOW-RS: store Part-10 instances (multipart/related; "
                 "type=\"application/dicom\") through the durable receive path")
    async def store_instances(request: Request) -> Response:
        return await store(request, None)

    @router.post("/studies/{study_instance_uid}", response_class=Response,
                 responses=answers, openapi_extra=body,
                 summary="STOW-RS to one study: an instance of another study is not stored "
                 "(Failure Reason 0xA900)")
    async def store_study_instances(request: Request, study_instance_uid: str) -> Response:
        return await store(request, study_instance_uid)

    return router
