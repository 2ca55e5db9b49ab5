"""The durable receive path shared by C-STORE and web uploads: check, spool, route, commit.

Success is returned only when the spool file is fsync'd and the instance row plus one
delivery row per destination are committed. Every failure maps to a named DIMSE failure
status; nothing here ever answers success for an instance that is not safe.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

from dde.config.secrets import SecretError
from dde.dicom import status as dimse
from dde.dicom.deidentify import HeldBack, Profile, deidentify, encode_part10
from dde.dicom.edits import EditError, apply_edits
from dde.dicom.header import (
    BrokenDataset,
    InstanceHeader,
    parse_header,
    parse_header_file,
)
from dde.dicom.part10 import NotPart10, dataset_offset
from dde.dicom.uids import uid_name
from dde.receiving.deliverability import Deliverability, Undeliverable
from dde.routing.decision import NoRoute
from dde.routing.deidentify_action import DeidentifyAction, describe
from dde.routing.route import PinView, Route
from dde.routing.router import Origin, Router
from dde.routing.rules import Verdict
from dde.store.errors import LedgerError
from dde.store.ledger import Ledger
from dde.store.records import NewInstance, NewVariant
from dde.store.spool import (
    Spool,
    SpooledFile,
    SpoolError,
    SpoolFull,
    encode_file_meta,
    spool_error,
)
from dde.telemetry import NULL_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

_REFUSALS: dict[type[Exception], tuple[int, str, str]] = {
    NoRoute: (dimse.CANNOT_UNDERSTAND_NO_ROUTE, "no_route", "no route"),
    EditError: (dimse.CANNOT_UNDERSTAND, "edit_failed", "edits cannot be made"),
    Undeliverable: (dimse.SOP_CLASS_NOT_SUPPORTED, "undeliverable", "undeliverable"),
    SecretError: (dimse.OUT_OF_RESOURCES, "secret_missing", "de-identification salt missing"),
}
"""What the routing step may refuse an instance for: (status, metric reason, what the
detail and the log say)."""


@dataclass(frozen=True)
class Incoming:
    """One instance as received: the encoded dataset (no file meta) and its context.

    The dataset is either in memory (``dataset``) or, when the receiver streamed it to
    disk as it arrived, in the Part-10 file ``dataset_file`` (which the spool adopts)."""

    dataset: bytes
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    calling_aet: str
    called_aet: str
    source_ip: str | None
    started: float | None = None
    """``time.monotonic()`` when the sender's request reached the router (handler entry);
    the acknowledgement latency is measured from here (default: when ingest starts)."""
    dataset_file: Path | None = None
    stream_error: OSError | None = None
    """Why writing ``dataset_file`` stopped short (disk full …): the instance is refused."""
    route: Route | None = None
    """A placement decided by the caller (a reconcile repair): the router is not asked."""
    receiver: str = ""
    """The receiver that took it (its name; its rules apply); empty: not by DICOM."""
    receiving_port: int = 0
    """The router's port it came to (0: not by DICOM)."""
    study_instance_uid: str | None = None
    """The study the sender requires the instance to be of (STOW-RS to
    ``/studies/{uid}``): an instance of another study is refused, not stored."""

    @property
    def size(self) -> int:
        """Bytes received (the dataset; the whole file when streamed to disk)."""
        if self.dataset_file is None:
            return len(self.dataset)
        try:
            return self.dataset_file.stat().st_size
        except OSError:
            return 0


@dataclass(frozen=True)
class IngestResult:
    status: int
    detail: str
    instance_id: int | None = None
    route: Route | None = None
    reason: str = ""
    """A short fixed label of why it was refused (metrics); empty on success."""

    @property
    def ok(self) -> bool:
        return self.status == dimse.SUCCESS


class IngestPipeline:
    def __init__(self, ledger: Ledger, spool: Spool, router: Router,
                 on_committed: Callable[[Iterable[str]], None],
                 telemetry: Telemetry = NULL_TELEMETRY,
                 deliverability: Deliverability | None = None,
                 profiles: Callable[[DeidentifyAction], Profile] | None = None) -> None:
        """``deliverability``: refuse what a chosen destination is known to refuse
        (``receiver.refuse_undeliverable``); None: acknowledge it all. ``profiles``: a
        rule's de-identification with its salt (:class:`SecretError` when the secret
        cannot be read: the instance is refused); None: de-identifying rules refuse."""
        self._ledger = ledger
        self._profiles = profiles
        self._deliverability = deliverability
        self._spool = spool
        self._router = router
        self._on_committed = on_committed
        self._telemetry = telemetry

    def ingest(self, incoming: Incoming) -> IngestResult:
        """Store one instance durably, or refuse it. A streamed ``dataset_file`` belongs to
        the pipeline from here: it becomes the spool file, or is removed when refused."""
        started = incoming.started if incoming.started is not None else time.monotonic()
        size = incoming.size
        try:
            result = self._ingest(incoming)
        except Exception:  # the last line of defence: never a false success
            log.exception("internal error while receiving an instance")
            result = IngestResult(dimse.OUT_OF_RESOURCES, "internal error",
                                  reason="internal_error")
        if not result.ok and incoming.dataset_file is not None:
            # Nothing refused was committed (what follows the commit cannot fail the
            # instance), so its file is not a spool file the ledger knows.
            incoming.dataset_file.unlink(missing_ok=True)
        self._report(result, size, time.monotonic() - started)
        return result

    def _report(self, result: IngestResult, size: int, seconds: float) -> None:
        try:
            if result.ok:
                self._telemetry.instance_received(size, seconds)
            else:
                self._telemetry.instance_refused(result.reason or "other", seconds)
        except Exception:  # metrics must never change the answer
            log.exception("telemetry failed")

    def _ingest(self, incoming: Incoming) -> IngestResult:
        if incoming.stream_error is not None:
            return self._refused_by_spool(incoming, spool_error(incoming.stream_error))
        try:
            header = self._header(incoming)
        except BrokenDataset as exc:
            log.warning("refused an instance from %s: %s", incoming.calling_aet, exc)
            return IngestResult(dimse.CANNOT_UNDERSTAND, str(exc), reason="broken_dataset")
        if not header.sop_instance_uid:
            log.warning("refused an instance from %s: the dataset has no SOP Instance UID",
                        incoming.calling_aet)
            return IngestResult(dimse.CANNOT_UNDERSTAND, "the dataset has no SOP Instance UID",
                                reason="no_sop_instance_uid")
        if header.sop_instance_uid != incoming.sop_instance_uid:
            log.warning("refused an instance from %s: dataset SOP Instance UID differs from "
                        "the C-STORE request's", incoming.calling_aet)
            return IngestResult(dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                "SOP Instance UID of the dataset differs from the request",
                                reason="uid_mismatch")

        wanted_study = incoming.study_instance_uid
        if wanted_study is not None and header.study_instance_uid != wanted_study:
            log.warning("refused an instance from %s: its Study Instance UID is not the "
                        "request's", incoming.calling_aet)
            return IngestResult(dimse.STUDY_INSTANCE_UID_MISMATCH,
                                "Study Instance UID of the dataset differs from the request",
                                reason="study_mismatch")

        try:
            spooled = self._spool_write(incoming)
        except SpoolError as exc:
            return self._refused_by_spool(incoming, exc)

        record = self._record(incoming, header, spooled.relative_path, spooled.size)
        origin = Origin(incoming.calling_aet, incoming.called_aet, incoming.source_ip or "",
                        incoming.receiving_port, incoming.receiver)
        fixed = incoming.route
        made: list[NewVariant] = []
        try:
            verdict = None if fixed is not None else self._router.verdict(header, origin)
            if verdict is not None and (verdict.edits or verdict.deidentify) \
                    and not verdict.discard:
                made = self._variants(incoming, spooled, verdict)

            def decide(view: PinView) -> Route:
                if fixed is not None:
                    return fixed
                route = self._router.route(header, view, origin, verdict)
                if self._deliverability is not None and not route.discard:
                    self._deliverability.check(route.destinations + route.mirrors,
                                               incoming.sop_class_uid,
                                               incoming.transfer_syntax_uid)
                return route

            instance_id, route = self._ledger.intake.ingest(record, decide, made)
        except (NoRoute, EditError, Undeliverable, SecretError) as exc:
            self._remove(spooled.relative_path, made)
            status, reason, what = next(refusal for kind, refusal in _REFUSALS.items()
                                        if isinstance(exc, kind))
            log.warning("refused an instance from %s: %s: %s", incoming.calling_aet, what, exc)
            return IngestResult(status, f"{what}: {exc}", reason=reason)
        except SpoolError as exc:
            self._remove(spooled.relative_path, made)
            return self._refused_by_spool(incoming, exc)
        except LedgerError as exc:
            self._remove(spooled.relative_path, made)
            log.error("refused an instance from %s: ledger write failed: %s",
                      incoming.calling_aet, exc)
            return IngestResult(dimse.OUT_OF_RESOURCES, "ledger write failed",
                                reason="ledger_error")
        except Exception:
            self._remove(spooled.relative_path, made)
            raise
        if made:  # variants of rules whose destinations all got other bytes are not kept
            used = {rule for _, rule in route.variants}
            for variant in made:
                if variant.rule not in used and variant.spool_path is not None:
                    self._spool.remove(variant.spool_path)

        destinations = route.destinations + route.mirrors
        if route.discard:
            log.info("received instance #%d (%s, %d bytes) from %s -> discarded [rule %s]",
                     instance_id, uid_name(incoming.sop_class_uid), spooled.size,
                     incoming.calling_aet, route.rule)
            self._drop_spool_file(instance_id, spooled.relative_path)
            return IngestResult(dimse.SUCCESS, "discarded", instance_id, route)
        log.info("received instance #%d (%s, %d bytes) from %s -> %s [rule %s]", instance_id,
                 uid_name(incoming.sop_class_uid), spooled.size, incoming.calling_aet,
                 ", ".join(destinations), route.rule)
        try:
            self._on_committed(destinations)
        except Exception:  # committed is committed: the workers' poll finds it anyway
            log.exception("could not wake the delivery of instance #%d", instance_id)
        return IngestResult(dimse.SUCCESS, "stored", instance_id, route)

    def _remove(self, relative_path: str, made: list[NewVariant]) -> None:
        """A refused instance's spool file and the variants made of it."""
        self._spool.remove(relative_path)
        for variant in made:
            if variant.spool_path is not None:
                self._spool.remove(variant.spool_path)

    def _variants(self, incoming: Incoming, spooled: SpooledFile,
                  verdict: Verdict) -> list[NewVariant]:
        """One edited copy per matching rule with edits, written durably to the spool
        like the original (before the commit, so before the acknowledgement). Raises
        :class:`EditError` or :class:`SpoolError`, having removed the copies it made."""
        dataset = incoming.dataset
        if incoming.dataset_file is not None:  # streamed: read back what was spooled
            dataset = self._spooled_dataset(spooled)
        file_meta = encode_file_meta(incoming.sop_class_uid, incoming.sop_instance_uid,
                                     incoming.transfer_syntax_uid, incoming.calling_aet)
        made: list[NewVariant] = []
        try:
            for rule, edits in verdict.edits:
                edited = apply_edits(dataset, incoming.transfer_syntax_uid, edits)
                written = self._spool.write(file_meta, edited.dataset)
                applied = json.dumps([asdict(a) for a in edited.applied])
                made.append(NewVariant(rule, written.relative_path, written.size, applied))
            for rule, action in verdict.deidentify:
                made.append(self._deidentified(rule, action, file_meta + dataset))
        except (EditError, SpoolError, SecretError):
            for variant in made:
                if variant.spool_path is not None:
                    self._spool.remove(variant.spool_path)
            raise
        return made

    def _deidentified(self, rule: str, action: DeidentifyAction, part10: bytes) -> NewVariant:
        """The rule's de-identified copy, written durably to the spool under its new SOP
        Instance UID (file meta included), or held back (burned-in annotation, or what the
        engine cannot de-identify): then no file, and the reason. Raises
        :class:`SecretError` (no salt), :class:`EditError` (not readable) or
        :class:`SpoolError`."""
        if self._profiles is None:
            raise SecretError("de-identification is not set up in this process")
        try:
            profile = self._profiles(action)
        except SecretError as exc:  # where it was looked goes to the log, not to the sender
            log.error("rule %s: %s", rule, exc)
            raise SecretError(f"rule {rule}: secret {action.salt_secret!r} cannot be read "
                              "(the router's log says where it looked)") from None
        method = describe(action)
        try:
            source = dcmread(BytesIO(part10))
        except Exception as exc:  # the type only: a message may quote a value
            raise EditError(f"the instance cannot be read to de-identify it "
                            f"({type(exc).__name__})") from None
        result = deidentify(source, profile)
        if isinstance(result, HeldBack):
            return NewVariant(rule, None, 0, "[]", method, None, result.reason)
        try:
            encoded = encode_part10(result.dataset)
        except Exception as exc:
            raise EditError(f"the de-identified copy cannot be encoded "
                            f"({type(exc).__name__})") from None
        written = self._spool.write(encoded, b"")
        return NewVariant(rule, written.relative_path, written.size, "[]", method,
                          str(result.dataset.SOPInstanceUID))

    def _spooled_dataset(self, spooled: SpooledFile) -> bytes:
        """The dataset of a streamed instance, read back whole from its spool file: an
        edited copy costs its size in memory once (only instances a rule with edits
        routes; the others are never read back)."""
        try:
            with self._spool.path_of(spooled.relative_path).open("rb") as stream:
                stream.seek(dataset_offset(stream))
                return stream.read()
        except (OSError, NotPart10) as exc:
            raise EditError(f"the spooled instance cannot be read back: {exc}") from None

    @staticmethod
    def _refused_by_spool(incoming: Incoming, exc: SpoolError) -> IngestResult:
        log.error("refused an instance from %s: %s", incoming.calling_aet, exc)
        reason = "spool_full" if isinstance(exc, SpoolFull) else "spool_error"
        return IngestResult(dimse.OUT_OF_RESOURCES, str(exc), reason=reason)

    def _drop_spool_file(self, instance_id: int, relative_path: str) -> None:
        """A discarded instance needs no spool file (the janitor only looks at delivered
        ones); failing here changes nothing for the sender."""
        try:
            self._ledger.spool_index.mark_spool_removed([instance_id])
            self._spool.remove(relative_path)
        except (LedgerError, OSError) as exc:
            log.warning("could not remove the spool file of discarded instance #%d: %s",
                        instance_id, exc)

    @staticmethod
    def _header(incoming: Incoming) -> InstanceHeader:
        if incoming.dataset_file is None:
            return parse_header(incoming.dataset, incoming.transfer_syntax_uid)
        try:
            with incoming.dataset_file.open("rb") as stream:
                start = dataset_offset(stream)
                end = stream.seek(0, os.SEEK_END)
                return parse_header_file(stream, start, end, incoming.transfer_syntax_uid)
        except NotPart10 as exc:
            raise BrokenDataset(f"received file: {exc}") from None
        except OSError as exc:
            raise BrokenDataset(f"received file unreadable: {exc.strerror or exc}") from None

    def _spool_write(self, incoming: Incoming) -> SpooledFile:
        if incoming.dataset_file is not None:
            return self._spool.adopt(incoming.dataset_file)
        file_meta = encode_file_meta(incoming.sop_class_uid, incoming.sop_instance_uid,
                                     incoming.transfer_syntax_uid, incoming.calling_aet)
        return self._spool.write(file_meta, incoming.dataset)

    @staticmethod
    def _record(incoming: Incoming, header: InstanceHeader, path: str, size: int) -> NewInstance:
        return NewInstance(
            sop_instance_uid=incoming.sop_instance_uid,
            sop_class_uid=incoming.sop_class_uid,
            transfer_syntax_uid=incoming.transfer_syntax_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            patient_id=header.patient_id,
            accession_number=header.accession_number,
            modality=header.modality,
            calling_aet=incoming.calling_aet,
            called_aet=incoming.called_aet,
            source_ip=incoming.source_ip,
            spool_path=path,
            size=size,
            received_at=time.time(),
        )

