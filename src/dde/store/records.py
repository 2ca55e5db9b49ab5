"""What the ledger's repositories take and give: plain, typed records."""

from __future__ import annotations

from dataclasses import dataclass, field

from dde.store.states import DeliveryState


@dataclass(frozen=True)
class NewInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    calling_aet: str
    called_aet: str
    source_ip: str | None
    spool_path: str
    size: int
    received_at: float


@dataclass(frozen=True)
class NewVariant:
    """An edited copy of an instance, written to the spool before the ingest commit: the
    rule whose ``set``/``remove`` made it, its spool file, and what changed (JSON: a list of
    {tag, keyword, action, old, new})."""

    rule: str
    spool_path: str | None
    """None only when ``held_back``."""
    size: int
    edits_json: str
    deidentified: str | None = None
    """A de-identified copy: how (``profile basic, options …``, no patient data)."""
    sop_instance_uid: str | None = None
    """The copy's own SOP Instance UID (a de-identified one's is new); None: the received."""
    held_back: str | None = None
    """Why no copy was made and the rule's destinations get nothing (burned-in annotation):
    their deliveries are written failed with this reason, and can never send."""


@dataclass(frozen=True)
class QueuedDelivery:
    id: int
    instance_id: int
    endpoint: str
    attempts: int
    spool_path: str | None
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    received_at: float | None = None
    study_instance_uid: str | None = None
    held_back: str | None = None
    """The rule's copy was held back: the delivery fails with this reason, never sends."""


@dataclass(frozen=True)
class DeliveryOutcome:
    delivery_id: int
    state: DeliveryState
    error: str | None = None
    counts_as_attempt: bool = True
    next_attempt_at: float = 0.0
    suspect: bool = False
    """The destination never answered this instance: from now on it is retried alone."""
    transfer_syntax_uid: str | None = None
    """Delivered in this syntax after transcoding (None: as received)."""
    transcoded_from: str | None = None
    """The syntax it was received in, when it was transcoded for the destination."""


@dataclass
class DeliveryRecord:
    id: int
    endpoint: str
    role: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    delivered_at: float | None
    transfer_syntax_uid: str | None = None
    """The syntax delivered in, when transcoded for the destination."""
    transcoded_from: str | None = None
    variant_rule: str | None = None
    """The rule whose edited bytes this delivery sends (None: as received)."""
    edits_json: str | None = None
    """What that rule changed in this instance (:class:`NewVariant`)."""
    deidentified: str | None = None
    """The delivery sends the instance de-identified: how (:class:`NewVariant`)."""
    sent_sop_instance_uid: str | None = None
    """The SOP Instance UID it sends under when not the received one (de-identified)."""
    held_back: str | None = None
    commitment: str | None = None
    """The latest storage commitment's state (pending, committed, failed); None: none was
    asked (an endpoint without storage commitment, or not delivered yet)."""
    commitment_reason: str | None = None


@dataclass
class InstanceRecord:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    calling_aet: str
    called_aet: str
    source_ip: str | None
    rule: str
    size: int
    received_at: float
    spool_path: str | None
    deliveries: list[DeliveryRecord] = field(default_factory=list)


@dataclass
class InstanceSummary:
    """One row of a ledger search: the instance's identifiers and its deliveries."""

    id: int
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
    received_at: float
    deliveries: list[DeliveryRecord] = field(default_factory=list)


@dataclass(frozen=True)
class QueueSummary:
    """Pending deliveries of one endpoint: how many, and when the oldest was queued."""

    pending: int
    oldest_created_at: float | None


@dataclass
class QueueEntry:
    delivery_id: int
    endpoint: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: float
    created_at: float
    instance_id: int
    sop_instance_uid: str


@dataclass(frozen=True)
class StoredInstance:
    """One row of ``instances`` as it is stored (:meth:`Diagnostics.instances`)."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    calling_aet: str
    called_aet: str
    source_ip: str | None
    rule: str
    size: int
    spool_path: str | None
    received_at: float
    spool_removed_at: float | None


@dataclass(frozen=True)
class StoredDelivery:
    """One row of ``deliveries`` with its instance's SOP Instance UID
    (:meth:`Diagnostics.deliveries`)."""

    id: int
    instance_id: int
    sop_instance_uid: str
    endpoint: str
    role: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: float
    created_at: float
    updated_at: float
    delivered_at: float | None


@dataclass(frozen=True)
class StudyPin:
    """A study pinned to an endpoint for one group of endpoints."""

    study_instance_uid: str
    group: str
    endpoint: str
    pinned_at: float


@dataclass(frozen=True)
class SeedDelivery:
    """A delivery written as it stands after its history (:meth:`Diagnostics.seed`).

    Times left out: created at the instance's ``received_at``, due and updated when created.
    """

    endpoint: str
    role: str = "route"
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float | None = None
    created_at: float | None = None
    updated_at: float | None = None
    delivered_at: float | None = None


@dataclass(frozen=True)
class SeedInstance:
    """An instance with its deliveries in any state (:meth:`Diagnostics.seed`).

    ``spool_removed_at`` set: its spool file was released then (``spool_path`` not kept).
    """

    instance: NewInstance
    rule: str
    deliveries: tuple[SeedDelivery, ...] = ()
    spool_removed_at: float | None = None
