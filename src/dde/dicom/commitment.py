"""Storage Commitment Push Model (PS3.4 Annex J): the vocabulary and the two small datasets
the service exchanges.

The router is the SCU: after delivering instances it asks the destination (the SCP) to
commit to them with an N-ACTION (Action Type 1) on the well-known SOP Instance, carrying a
Transaction UID and the Referenced SOP Sequence; the SCP answers later with an
N-EVENT-REPORT carrying the same Transaction UID: Event Type 1 when it commits to every
instance, 2 when some failed (Failed SOP Sequence, each item with its Failure Reason,
PS3.3 C.14.1.1). The report usually comes on an association the SCP opens to the router's
own AE (the SCP then asks for the SCP role of the SOP class in role selection, since it
invokes N-EVENT-REPORT as the requestor); it may come on the N-ACTION's association.

The datasets are a few elements per instance: they are encoded and decoded whole in memory
with pydicom, in the presentation context's transfer syntax (implicit or explicit VR little
endian: the syntaxes proposed for this SOP class).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS: Final = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE: Final = "1.2.840.10008.1.20.1.1"
"""The well-known SOP Instance every N-ACTION and N-EVENT-REPORT of the service names."""
REQUEST_STORAGE_COMMITMENT: Final = 1
"""N-ACTION Action Type ID: request storage commitment."""
EVENT_ALL_COMMITTED: Final = 1
"""N-EVENT-REPORT Event Type ID: storage commitment request successful."""
EVENT_FAILURES_EXIST: Final = 2
"""N-EVENT-REPORT Event Type ID: storage commitment request complete, failures exist."""
COMMITMENT_TRANSFER_SYNTAXES: Final = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_EVENT_INFORMATION_BYTES: Final = 32 << 20
"""The largest N-EVENT-REPORT dataset the router reads (about 200 000 references)."""


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) of a Failed SOP Sequence item (PS3.3 C.14.1.1)."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119
    REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    DUPLICATE_TRANSACTION_UID = 0x0131
    RESOURCE_LIMITATION = 0x0213


def describe_failure(reason: int | None) -> str:
    """``0x0112 (no such object instance)``; a reason the standard does not name is shown
    as its code."""
    if reason is None:
        return "no failure reason given"
    try:
        name = FailureReason(reason).name.lower().replace("_", " ")
    except ValueError:
        name = "unknown failure reason"
    return f"0x{reason:04X} ({name})"


class CommitmentDataError(ValueError):
    """An N-ACTION or N-EVENT-REPORT dataset that is not what the service defines."""


@dataclass(frozen=True)
class SopReference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentRequest:
    """What one N-ACTION asks: commit to these instances under this transaction."""

    transaction_uid: str
    references: tuple[SopReference, ...]


@dataclass(frozen=True)
class FailedReference:
    reference: SopReference
    reason: int | None


@dataclass(frozen=True)
class CommitmentReport:
    """What one N-EVENT-REPORT says of a transaction."""

    transaction_uid: str
    event_type_id: int
    committed: tuple[SopReference, ...]
    failed: tuple[FailedReference, ...]


def new_transaction_uid() -> str:
    """A Transaction UID under the UUID root (``2.25.``): unique without a registered root,
    and the form Orthanc itself uses."""
    return f"2.25.{uuid.uuid4().int}"


def _encode(dataset: Dataset, transfer_syntax_uid: str) -> bytes:
    stream = DicomBytesIO()
    stream.is_little_endian = True
    stream.is_implicit_VR = transfer_syntax_uid == ImplicitVRLittleEndian
    write_dataset(stream, dataset)
    return bytes(stream.getvalue())


def _decode(raw: bytes, transfer_syntax_uid: str) -> Dataset:
    if len(raw) > MAX_EVENT_INFORMATION_BYTES:
        raise CommitmentDataError(f"a dataset of {len(raw)} bytes is too long")
    try:
        return read_dataset(io.BytesIO(raw), transfer_syntax_uid == ImplicitVRLittleEndian,
                            True)
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError) as exc:
        raise CommitmentDataError(f"the dataset cannot be read: {exc}") from None


def _items(references: Sequence[SopReference]) -> list[Dataset]:
    items = []
    for reference in references:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        items.append(item)
    return items


def encode_action_information(request: CommitmentRequest, transfer_syntax_uid: str) -> bytes:
    """The N-ACTION-RQ dataset (PS3.4 J.3.2.1.1)."""
    dataset = Dataset()
    dataset.TransactionUID = request.transaction_uid
    dataset.ReferencedSOPSequence = _items(request.references)
    return _encode(dataset, transfer_syntax_uid)


def _reference(item: Dataset) -> SopReference:
    sop_class = str(item.get("ReferencedSOPClassUID", "") or "")
    sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "")
    if not sop_instance:
        raise CommitmentDataError("an item without Referenced SOP Instance UID")
    return SopReference(sop_class, sop_instance)


def decode_action_information(raw: bytes, transfer_syntax_uid: str) -> CommitmentRequest:
    """An N-ACTION-RQ dataset (what a Storage Commitment SCP reads: tests' fake SCPs)."""
    dataset = _decode(raw, transfer_syntax_uid)
    uid = str(dataset.get("TransactionUID", "") or "")
    if not uid:
        raise CommitmentDataError("no Transaction UID")
    return CommitmentRequest(uid, tuple(
        _reference(item) for item in dataset.get("ReferencedSOPSequence", None) or []))


def encode_event_information(report: CommitmentReport, transfer_syntax_uid: str) -> bytes:
    """The N-EVENT-REPORT-RQ dataset (PS3.4 J.3.3.1.1), as an SCP sends it."""
    dataset = Dataset()
    dataset.TransactionUID = report.transaction_uid
    if report.committed:
        dataset.ReferencedSOPSequence = _items(report.committed)
    if report.failed:
        failed = _items([f.reference for f in report.failed])
        for item, entry in zip(failed, report.failed, strict=True):
            if entry.reason is not None:
                item.FailureReason = entry.reason
        dataset.FailedSOPSequence = failed
    return _encode(dataset, transfer_syntax_uid)


def decode_event_information(raw: bytes, transfer_syntax_uid: str,
                             event_type_id: int) -> CommitmentReport:
    """An N-EVENT-REPORT-RQ dataset; :class:`CommitmentDataError` without a Transaction UID
    or with an item naming no instance."""
    dataset = _decode(raw, transfer_syntax_uid)
    try:
        uid = str(dataset.get("TransactionUID", "") or "")
        committed = tuple(_reference(item)
                          for item in dataset.get("ReferencedSOPSequence", None) or [])
        failed = []
        for item in dataset.get("FailedSOPSequence", None) or []:
            reason = item.get("FailureReason", None)
            failed.append(FailedReference(_reference(item),
                                          None if reason is None else int(reason)))
    except (ValueError, TypeError, KeyError) as exc:
        raise CommitmentDataError(f"the dataset cannot be read: {exc}") from None
    if not uid:
        raise CommitmentDataError("no Transaction UID")
    return CommitmentReport(uid, event_type_id, committed, tuple(failed))
