"""Ledger records as JSON documents: the shapes ``dde where --json`` and ``dde queue --json``
print, which the web API returns too.

Times are local ISO 8601 with milliseconds (``2026-01-01T12:00:00.123``), as the CLI prints.

A delivery that sends a rule's edited bytes (``set``/``remove``) names that rule
(``variant``) and lists ``edits``: tag, keyword, action, the new value, and the old value
as :data:`HIDDEN` unless ``show_phi`` (``dde where --show-phi``, ``?show_phi=true``): an old
value is the instance's own data (patient data, often), a new one is the rule's. A
delivery of a de-identified copy names its rule too, says how (``deidentified``: profile and
options, no values) and the SOP Instance UID it sends under (``sent_sop_instance_uid``: a
salted hash, no patient data; the received UID stays how the instance is looked up). One
held back (burned-in annotation) is failed with the reason as its ``last_error``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from dde.store.records import DeliveryRecord, InstanceRecord, InstanceSummary, QueueEntry


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(timestamp)) + (
        f".{int((timestamp % 1) * 1000):03d}"
    )


HIDDEN = "(hidden)"
"""What an edit's old value shows without ``show_phi``."""


def edits_document(edits_json: str | None, show_phi: bool = False) -> list[dict[str, Any]]:
    """What a rule changed in an instance (as recorded at receive time)."""
    if not edits_json:
        return []
    try:
        edits = json.loads(edits_json)
    except ValueError:
        return []
    return [{"tag": e.get("tag"), "keyword": e.get("keyword"), "action": e.get("action"),
             "old": e.get("old") if show_phi or e.get("old") is None else HIDDEN,
             "new": e.get("new")} for e in edits if isinstance(e, dict)]


def delivery_document(d: DeliveryRecord, received_syntax: str | None = None,
                      show_phi: bool = False) -> dict[str, Any]:
    """One delivery; ``transfer_syntax_uid`` is what the destination got (the received
    syntax unless ``transcoded_from`` says it was transcoded; null while not delivered
    or, without ``received_syntax``, unknown here). ``commitment``: the latest storage
    commitment's state (``pending``, ``committed``, ``failed`` with
    ``commitment_reason``; null when none was asked)."""
    delivered_syntax = d.transfer_syntax_uid or (
        received_syntax if d.state == "delivered" else None)
    return {"id": d.id, "endpoint": d.endpoint, "role": d.role, "state": d.state,
            "attempts": d.attempts, "last_error": d.last_error,
            "delivered_at": iso(d.delivered_at),
            "next_attempt_at": iso(d.next_attempt_at) if d.state == "pending" else None,
            "transfer_syntax_uid": delivered_syntax, "transcoded_from": d.transcoded_from,
            "variant": d.variant_rule, "edits": edits_document(d.edits_json, show_phi),
            "deidentified": d.deidentified, "sent_sop_instance_uid": d.sent_sop_instance_uid,
            "commitment": d.commitment, "commitment_reason": d.commitment_reason}


def where_document(records: Sequence[InstanceRecord], show_phi: bool = False
                   ) -> dict[str, Any]:
    """The latest reception of one SOP Instance UID and its deliveries (``records`` as
    :meth:`Ledger.where` returns them, not empty)."""
    latest = records[-1]
    return {
        "sop_instance_uid": latest.sop_instance_uid,
        "sop_class_uid": latest.sop_class_uid,
        "transfer_syntax_uid": latest.transfer_syntax_uid,
        "received_at": iso(latest.received_at),
        "calling_aet": latest.calling_aet,
        "called_aet": latest.called_aet,
        "source_ip": latest.source_ip,
        "rule": latest.rule,
        "size": latest.size,
        "receptions": len(records),
        "deliveries": [delivery_document(d, latest.transfer_syntax_uid, show_phi)
                       for d in latest.deliveries],
    }


def summary_document(s: InstanceSummary) -> dict[str, Any]:
    """One ledger search result."""
    return {
        "sop_instance_uid": s.sop_instance_uid, "sop_class_uid": s.sop_class_uid,
        "study_instance_uid": s.study_instance_uid,
        "series_instance_uid": s.series_instance_uid, "patient_id": s.patient_id,
        "accession_number": s.accession_number, "modality": s.modality,
        "calling_aet": s.calling_aet, "rule": s.rule, "size": s.size,
        "received_at": iso(s.received_at),
        "deliveries": [delivery_document(d) for d in s.deliveries],
    }


def queue_document(counts: dict[str, dict[str, int]],
                   entries: Sequence[QueueEntry]) -> dict[str, Any]:
    return {
        "counts": counts,
        "deliveries": [
            {**asdict(e), "next_attempt_at": iso(e.next_attempt_at),
             "created_at": iso(e.created_at)} for e in entries
        ],
    }
