"""Response models of the ledger routes: upload, instances, the queue, statistics.

They describe the documents of :mod:`dde.reports` (``dde where --json``, ``dde queue
--json``), :func:`dde.web.upload.take_upload` and :func:`dde.web.stats.stats_document`
field for field; see :mod:`dde.web.schemas` for why a model must miss nothing. Times are
local ISO 8601 with milliseconds, as the CLI prints them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from dde.config import EndpointState
from dde.store.states import DeliveryState

# -- instances -----------------------------------------------------------------------------


class EditDocument(BaseModel):
    """One element a rule's ``set``/``remove`` changed in the bytes a delivery sends."""

    tag: str = Field(description="(gggg,eeee)")
    keyword: str = Field(description="The DICOM keyword (empty for a private tag)")
    action: Literal["set", "remove"]
    old: str | None = Field(description="The value received (null: absent); '(hidden)' "
                                        "unless show_phi=true")
    new: str | None = Field(description="The value sent (null: removed)")


class DeliveryDocument(BaseModel):
    """One delivery of an instance to one endpoint."""

    id: int
    endpoint: str
    role: Literal["route", "mirror"]
    state: DeliveryState
    attempts: int
    last_error: str | None
    delivered_at: str | None
    next_attempt_at: str | None = Field(description="When it is tried next (pending only)")
    transfer_syntax_uid: str | None = Field(
        default=None, description="The transfer syntax the destination got (delivered only)")
    transcoded_from: str | None = Field(
        default=None, description="The syntax it was received in, when the router "
                                  "transcoded it for this destination (losslessly)")
    variant: str | None = Field(
        default=None, description="The rule whose edits (set/remove) this delivery sends; "
                                  "null: the instance as received")
    edits: list[EditDocument] = Field(default_factory=list,
                                      description="What that rule changed in this instance")
    deidentified: str | None = Field(
        default=None, description="The rule de-identifies: how (profile, options; no "
                                  "values). A held-back copy fails with the reason")
    sent_sop_instance_uid: str | None = Field(
        default=None, description="The SOP Instance UID sent under, when not the received "
                                  "one (de-identified)")
    commitment: Literal["pending", "committed", "failed"] | None = Field(
        default=None, description="The latest storage commitment the destination was "
                                  "asked for (null: none asked: an endpoint without "
                                  "storage_commitment, or not delivered yet)")
    commitment_reason: str | None = Field(
        default=None, description="Why the commitment failed (the delivery was queued "
                                  "again)")


class InstanceDocument(BaseModel):
    """The latest reception of one SOP Instance UID and its deliveries (``dde where
    --json``)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    received_at: str
    calling_aet: str
    called_aet: str
    source_ip: str | None
    rule: str
    size: int = Field(description="Bytes")
    receptions: int = Field(description="How many times it was received")
    deliveries: list[DeliveryDocument]


class InstanceSummaryDocument(BaseModel):
    """One instance found by a ledger search."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    calling_aet: str
    rule: str
    size: int
    received_at: str
    deliveries: list[DeliveryDocument]


class SearchPage(BaseModel):
    """One page of a ledger search, newest first."""

    total: int = Field(description="Matches in all pages")
    limit: int
    offset: int
    instances: list[InstanceSummaryDocument]


# -- upload --------------------------------------------------------------------------------


class IngestedFile(BaseModel):
    """An uploaded instance that went through the receive path: stored, or refused with
    the DIMSE status a C-STORE sender would get."""

    name: str = Field(description="The uploaded name (zip entries: zip/entry)")
    status: Literal["stored", "refused"]
    dicom_status: int
    detail: str
    sop_instance_uid: str
    destinations: list[str] = Field(description="Where it goes (mirrors too)")


class SkippedFile(BaseModel):
    """A zip entry that is not an instance: a DICOMDIR, or not DICOM at all (a README)."""

    name: str
    status: Literal["skipped"]
    dicom_status: None
    detail: str
    sop_instance_uid: str | None = Field(description="null for a file that is not DICOM")


class UploadResult(BaseModel):
    """How many files were stored, refused and skipped, and each file's result."""

    stored: int
    refused: int
    skipped: int
    files: list[Annotated[IngestedFile | SkippedFile, Field(discriminator="status")]]


# -- queue ---------------------------------------------------------------------------------


class QueuedDelivery(BaseModel):
    """A delivery that waits or failed."""

    delivery_id: int
    endpoint: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    next_attempt_at: str
    created_at: str
    instance_id: int
    sop_instance_uid: str


class QueueDocument(BaseModel):
    """What waits or failed (``dde queue --json``)."""

    counts: dict[str, dict[str, int]] = Field(
        description="Per endpoint, deliveries per state (pending, delivered, failed)")
    deliveries: list[QueuedDelivery]


class RetryAnswer(BaseModel):
    """A delivery made pending again, due now."""

    id: int
    previous: DeliveryState
    state: Literal["pending"]


class RetryFailedAnswer(BaseModel):
    requeued: int = Field(description="Failed deliveries made pending again")


# -- statistics ----------------------------------------------------------------------------


class EndpointStats(BaseModel):
    """One endpoint's health, load, queue and throughput."""

    name: str
    state: EndpointState
    groups: list[str]
    health: str = Field(description="up, down, or unknown when no router publishes it")
    breaker: str | None
    load: int | None
    last_error: str | None
    queued: int
    oldest_queued_age_seconds: float | None
    delivered: int
    failed: int
    delivered_per_minute: list[int] = Field(description="One count per entry of ``minutes``")
    delivered_last_minutes: int


class StatsDocument(BaseModel):
    """Per endpoint statistics and instances received per minute, over ``minutes`` (the
    start of each whole minute, oldest first)."""

    generated_at: str
    minutes: list[str]
    received_per_minute: list[int]
    endpoints: list[EndpointStats]
