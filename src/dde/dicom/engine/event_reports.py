"""N-EVENT-REPORT-RQs the router receives as an acceptor: storage commitment reports
(PS3.4 J.3.3), from the PACS the router asked to commit to delivered instances.

The report's dataset is read whole (it is small: :data:`MAX_EVENT_INFORMATION_BYTES` at
most), handed to the receiving side (which writes the ledger: blocking, so this runs in the
acceptor's worker threads), and answered with the status the receiving side returns. Any
other event (another SOP class) is answered "no such SOP class"; a dataset that cannot be
read, "processing failure". The response always names the Affected SOP Class and Instance
(Orthanc refuses one that does not).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dde.dicom import status as dimse
from dde.dicom.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
    CommitmentDataError,
    CommitmentReport,
    decode_event_information,
)
from dde.dicom.engine import commands
from dde.dicom.engine.commands import Command

log = logging.getLogger(__name__)

ReportHandler = Callable[[CommitmentReport], int]


def answer(command: Command, dataset: bytes, transfer_syntax_uid: str,
           handler: ReportHandler, calling_aet: str) -> bytes:
    """The N-EVENT-REPORT-RSP to ``command`` once ``handler`` has taken its report."""
    sop_class = command.affected_sop_class_uid or ""
    status = dimse.SUCCESS
    if sop_class != STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS:
        log.warning("an N-EVENT-REPORT of SOP class %s from %s: not a commitment report",
                    sop_class, calling_aet)
        status = dimse.NO_SUCH_SOP_CLASS
    else:
        try:
            report = decode_event_information(dataset, transfer_syntax_uid,
                                              command.event_type_id or 0)
        except CommitmentDataError as exc:
            log.warning("a storage commitment report from %s cannot be read: %s",
                        calling_aet, exc)
            status = dimse.PROCESSING_FAILURE
        else:
            try:
                status = handler(report)
            except Exception:  # the boundary: the PACS is told, it may report again
                log.exception("a storage commitment report from %s was not recorded",
                              calling_aet)
                status = dimse.PROCESSING_FAILURE
    return commands.n_event_report_rsp(
        command.message_id or 0, sop_class, command.affected_sop_instance_uid or "", status,
        command.event_type_id)
