"""One association the router accepts (the router as SCP), from the A-ASSOCIATE-RQ to the
close: negotiation, C-ECHO, and C-STORE with each dataset written to a file as its
fragments arrive (never whole in memory), handed to the caller's ``store`` (in a worker
thread) only when its last fragment is in, and answered with the status ``store`` returns.
An N-EVENT-REPORT-RQ (a storage commitment report from a PACS) has its small dataset read
in memory and handed to ``commitment_report`` (:mod:`dde.dicom.engine.event_reports`).

Bounds against hostile peers, by construction: every PDU's length is checked before its
body is read (``max_pdu`` for P-DATA-TF, :data:`MAX_CONTROL_PDU` for the rest); the
A-ASSOCIATE-RQ must come within ``request_timeout`` and every later PDU within
``network_timeout``; anything the protocol does not allow aborts the association, and an
incomplete dataset is never stored. The association's slot is the caller's business
(:class:`Slots`): it is taken only once the request is admitted, and given back however
the association ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from dde.dicom import status as dimse
from dde.dicom.commitment import MAX_EVENT_INFORMATION_BYTES, CommitmentReport
from dde.dicom.engine import commands, event_reports, pdus
from dde.dicom.engine.acceptance import (
    APPLICATION_CONTEXT_NOT_SUPPORTED,
    LOCAL_LIMIT_EXCEEDED,
    PROTOCOL_VERSION_NOT_SUPPORTED,
    Proposal,
    Rejection,
    agree,
    decode_proposal,
)
from dde.dicom.engine.commands import Command, CommandError, CommandField
from dde.dicom.engine.pdus import PduTooLarge, PduType, ProtocolError
from dde.dicom.uids import APPLICATION_CONTEXT_NAME

log = logging.getLogger(__name__)

MAX_CONTROL_PDU: Final = 1 << 20
"""The largest A-ASSOCIATE-RQ (or other non-data PDU) read: far above any real request."""
UNLIMITED_PDU_GUARD: Final = 64 << 20
"""With no announced maximum (0), a P-DATA-TF may still not exceed this."""
RELEASE_LINGER: Final = 2.0
"""After our A-RELEASE-RP, how long the requestor has to close the connection."""


@dataclass(frozen=True)
class AcceptorLimits:
    max_pdu: int
    request_timeout: float
    network_timeout: float
    preferred_syntaxes: tuple[str, ...]
    sender_rest: bool


@dataclass(frozen=True)
class Peer:
    calling_aet: str
    called_aet: str
    address: str


@dataclass(frozen=True)
class ReceivedDataset:
    """A C-STORE whose dataset is complete, in the Part-10 file ``path`` (``write_error``:
    why the file is incomplete although every fragment arrived, e.g. a full disk)."""

    path: Path
    write_error: OSError | None
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    peer: Peer
    started: float


@dataclass(frozen=True)
class StoreOutcome:
    status: int
    detail: str = ""


class AcceptorServices(Protocol):
    """What the receiving side decides (the engine only speaks the protocol)."""

    def dataset_path(self) -> Path:
        """Where the next received dataset is written: an empty file or a new name."""

    def admit(self, proposal: Proposal, address: str) -> Rejection | None:
        """Whether this requestor may associate (allow-lists); may block (a worker thread)."""

    def file_meta(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                  calling_aet: str) -> bytes:
        """What the file holds before the dataset: the preamble, DICM and the file meta."""

    def store(self, received: ReceivedDataset) -> StoreOutcome:
        """Make the instance durable (blocking: a worker thread). The file at
        ``received.path`` is the store's from here: it keeps it or removes it."""

    def commitment_report(self, report: CommitmentReport, peer: Peer) -> int:
        """Take a storage commitment report (blocking: a worker thread); the status of the
        N-EVENT-REPORT-RSP."""


class Slots:
    """Association slots of one server, in all and per source address (event-loop thread
    only)."""

    def __init__(self, limit: int, per_source: int | None = None) -> None:
        self.limit = limit
        self.per_source = per_source or limit
        self.active = 0
        self._by_source: dict[str, int] = {}

    def take(self, source: str) -> bool:
        held = self._by_source.get(source, 0)
        if self.active >= self.limit or held >= self.per_source:
            return False
        self.active += 1
        self._by_source[source] = held + 1
        return True

    def give(self, source: str) -> None:
        self.active -= 1
        held = self._by_source.get(source, 0) - 1
        if held > 0:
            self._by_source[source] = held
        else:
            self._by_source.pop(source, None)


class DatasetFile:
    """A received dataset being written: preamble, file meta, then each fragment as it
    arrives. A write error is kept (the fragments still drain) and reported with the file."""

    def __init__(self, path: Path, head: bytes) -> None:
        self.path = path
        self.error: OSError | None = None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.write(head)

    def write(self, data: bytes | memoryview) -> None:
        if self.error is not None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.error = exc

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass
class PendingStore:
    """A C-STORE-RQ whose dataset is arriving."""

    command: Command
    context_id: int
    started: float
    file: DatasetFile | None
    refusal: str = ""
    """Why the instance is refused once its dataset is in (no file is then written)."""
    refusal_status: int = dimse.CANNOT_UNDERSTAND
    report: bytearray | None = None
    """The dataset of an N-EVENT-REPORT-RQ, read in memory (no file)."""


def store_response(command: Command, status: int, detail: str) -> bytes:
    """The C-STORE-RSP to ``command``: ``detail`` as Error Comment unless it is success."""
    comment = dimse.error_comment(detail) if status != dimse.SUCCESS else None
    return commands.c_store_rsp(command.message_id or 0, command.affected_sop_class_uid or "",
                                command.affected_sop_instance_uid or "", status, comment)


class AssociationEnded(Exception):
    """The association is over (released, aborted or broken); nothing more to answer."""


@dataclass
class Acceptor:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    services: AcceptorServices
    limits: AcceptorLimits
    slots: Slots
    executor: Executor
    address: str
    accepted: dict[int, tuple[str, str]] = field(default_factory=dict)
    peer: Peer | None = None
    pending: PendingStore | None = None
    _command: bytearray = field(default_factory=bytearray)

    async def run(self) -> None:
        try:
            proposal = await self._request()
            if proposal is None:
                return
            if not self.slots.take(self.address):
                log.warning("association from %s refused: %d associations in progress "
                            "(%d from this address)", self.address, self.slots.active,
                            self.slots.per_source)
                await self._answer_and_close(LOCAL_LIMIT_EXCEEDED.encode())
                return
            try:
                await self._associated(proposal)
            finally:
                self.slots.give(self.address)
        except (AssociationEnded, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if self.pending is not None and self.pending.file is not None:
                self.pending.file.discard()
            self.pending = None
            if not self.writer.is_closing():
                self.writer.transport.abort()

    async def _request(self) -> Proposal | None:
        """The A-ASSOCIATE-RQ, admitted; None when answered otherwise (and closed)."""
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                pdu = await pdus.read_pdu(self.reader, MAX_CONTROL_PDU)
        except TimeoutError:
            log.debug("connection from %s sent no A-ASSOCIATE-RQ in time", self.address)
            return None
        except PduTooLarge as exc:
            log.warning("aborted a connection from %s: %s", self.address, exc)
            self._abort(pdus.ABORT_REASON_INVALID_PDU_PARAMETER, str(exc))
            return None
        except ProtocolError as exc:
            self._abort(pdus.ABORT_REASON_UNRECOGNIZED_PDU_PARAMETER, str(exc))
            return None
        if pdu.type != PduType.A_ASSOCIATE_RQ:
            self._abort(pdus.ABORT_REASON_UNEXPECTED_PDU,
                        f"{PduType(pdu.type).name} before an association")
            return None
        try:
            proposal = decode_proposal(pdu.body)
        except ProtocolError as exc:
            self._abort(pdus.ABORT_REASON_UNRECOGNIZED_PDU_PARAMETER, str(exc))
            return None
        rejection: Rejection | None
        if not proposal.protocol_version & 1:
            rejection = PROTOCOL_VERSION_NOT_SUPPORTED
        elif proposal.application_context != APPLICATION_CONTEXT_NAME:
            rejection = APPLICATION_CONTEXT_NOT_SUPPORTED
        else:
            loop = asyncio.get_running_loop()
            rejection = await loop.run_in_executor(self.executor, self.services.admit,
                                                   proposal, self.address)
        if rejection is not None:
            await self._answer_and_close(rejection.encode())
            return None
        return proposal

    async def _associated(self, proposal: Proposal) -> None:
        agreement = agree(proposal, max_pdu=self.limits.max_pdu,
                          preferred=self.limits.preferred_syntaxes,
                          sender_rest=self.limits.sender_rest)
        self.accepted = agreement.accepted
        self.peer = Peer(proposal.calling_aet, proposal.called_aet, self.address)
        await self._write(agreement.answer)
        data_limit = self.limits.max_pdu or UNLIMITED_PDU_GUARD
        while True:
            try:
                async with asyncio.timeout(self.limits.network_timeout):
                    pdu = await pdus.read_pdu(self.reader, data_limit, MAX_CONTROL_PDU)
            except TimeoutError:
                self._abort(pdus.ABORT_REASON_NOT_SPECIFIED,
                            f"nothing received for {self.limits.network_timeout:g} s")
                return
            except PduTooLarge as exc:
                log.warning("aborted an association from %s: %s", self.address, exc)
                self._abort(pdus.ABORT_REASON_INVALID_PDU_PARAMETER, str(exc))
                return
            except ProtocolError as exc:
                self._abort(pdus.ABORT_REASON_UNRECOGNIZED_PDU_PARAMETER, str(exc))
                return
            if pdu.type == PduType.P_DATA_TF:
                try:
                    await self._p_data(pdu.body)
                except (ProtocolError, CommandError) as exc:
                    self._abort(pdus.ABORT_REASON_INVALID_PDU_PARAMETER, str(exc))
                    return
            elif pdu.type == PduType.A_RELEASE_RQ:
                await self._release()
                return
            elif pdu.type == PduType.A_ABORT:
                return
            else:
                self._abort(pdus.ABORT_REASON_UNEXPECTED_PDU,
                            f"unexpected {PduType(pdu.type).name} while associated")
                return

    async def _p_data(self, body: bytes) -> None:
        for pdv in pdus.split_pdvs(body):
            if pdv.context_id not in self.accepted:
                raise ProtocolError(f"a PDV on presentation context {pdv.context_id}, "
                                    "which was not accepted")
            if pdv.is_command:
                if self.pending is not None:
                    raise ProtocolError("a command fragment inside a dataset")
                self._command += pdv.data
                if len(self._command) > commands.MAX_COMMAND_BYTES:
                    raise ProtocolError("a command set longer than any real one")
                if pdv.is_last:
                    command = commands.decode(self._command)
                    self._command.clear()
                    await self._on_command(command, pdv.context_id)
                continue
            pending = self.pending
            if pending is None or pending.context_id != pdv.context_id:
                raise ProtocolError("a dataset fragment without its command")
            if pending.file is not None:
                pending.file.write(pdv.data)
            elif pending.report is not None:
                pending.report += pdv.data
                if len(pending.report) > MAX_EVENT_INFORMATION_BYTES:
                    raise ProtocolError("an N-EVENT-REPORT dataset longer than any real one")
            if pdv.is_last:
                self.pending = None
                await self._stored(pending)

    async def _on_command(self, command: Command, context_id: int) -> None:
        field_ = command.command_field
        message_id = command.message_id or 0
        if field_ == CommandField.C_ECHO_RQ:
            await self._respond(context_id, commands.c_echo_rsp(message_id, dimse.SUCCESS))
            return
        if field_ == CommandField.C_STORE_RQ and command.has_data_set:
            self.pending = self._begin_store(command, context_id)
            return
        if field_ == CommandField.N_EVENT_REPORT_RQ and command.has_data_set:
            self.pending = PendingStore(command, context_id, time.monotonic(), None,
                                        report=bytearray())
            return
        if field_ == CommandField.C_CANCEL_RQ:
            return
        if command.has_data_set:  # answered once its dataset is in
            self.pending = PendingStore(command, context_id, time.monotonic(), None,
                                        "unrecognized operation",
                                        dimse.UNRECOGNIZED_OPERATION)
            return
        await self._respond(context_id, self._failure(command, dimse.UNRECOGNIZED_OPERATION,
                                                      "unrecognized operation"))

    def _begin_store(self, command: Command, context_id: int) -> PendingStore:
        started = time.monotonic()
        assert self.peer is not None
        if not command.affected_sop_instance_uid:
            log.warning("refused a C-STORE request from %s: no Affected SOP Instance UID",
                        self.peer.calling_aet)
            return PendingStore(command, context_id, started, None,
                                "C-STORE request has no Affected SOP Instance UID")
        abstract, syntax = self.accepted[context_id]
        try:
            meta = self.services.file_meta(command.affected_sop_class_uid or abstract,
                                           command.affected_sop_instance_uid, syntax,
                                           self.peer.calling_aet)
            dataset = DatasetFile(self.services.dataset_path(), meta)
        except OSError as exc:
            log.error("cannot write a received dataset: %s", exc.strerror or exc)
            return PendingStore(command, context_id, started, None,
                                "the receiver cannot write the dataset",
                                dimse.OUT_OF_RESOURCES)
        except ValueError:
            return PendingStore(command, context_id, started, None,
                                "C-STORE request with unusable UIDs")
        return PendingStore(command, context_id, started, dataset)

    async def _stored(self, pending: PendingStore) -> None:
        command = pending.command
        if pending.report is not None:
            await self._event_report(pending, pending.report)
            return
        if pending.file is None:
            if command.command_field != CommandField.C_STORE_RQ:
                answer = self._failure(command, pending.refusal_status, pending.refusal)
            else:
                answer = store_response(command, pending.refusal_status, pending.refusal)
            await self._respond(pending.context_id, answer)
            return
        pending.file.close()
        assert self.peer is not None
        abstract, syntax = self.accepted[pending.context_id]
        received = ReceivedDataset(
            path=pending.file.path, write_error=pending.file.error,
            sop_class_uid=command.affected_sop_class_uid or abstract,
            sop_instance_uid=command.affected_sop_instance_uid or "",
            transfer_syntax_uid=syntax, peer=self.peer, started=pending.started)
        try:  # the file is the store's now: it keeps it or removes it
            outcome = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.services.store, received)
        except Exception:  # the boundary: never a false success
            log.exception("could not store a received instance")
            outcome = StoreOutcome(dimse.OUT_OF_RESOURCES, "internal error")
            pending.file.path.unlink(missing_ok=True)
        await self._respond(pending.context_id, store_response(
            command, outcome.status, outcome.detail))

    async def _event_report(self, pending: PendingStore, dataset: bytearray) -> None:
        peer = self.peer
        assert peer is not None
        _, syntax = self.accepted[pending.context_id]

        def handler(report: CommitmentReport) -> int:
            return self.services.commitment_report(report, peer)

        answer = await asyncio.get_running_loop().run_in_executor(
            self.executor, event_reports.answer, pending.command, bytes(dataset), syntax,
            handler, peer.calling_aet)
        await self._respond(pending.context_id, answer)

    @staticmethod
    def _failure(command: Command, status: int, detail: str) -> bytes:
        field_ = (command.command_field or 0) | 0x8000
        elements: dict[int, commands.Value] = {
            commands.COMMAND_FIELD: field_,
            commands.MESSAGE_ID_BEING_RESPONDED_TO: command.message_id or 0,
            commands.COMMAND_DATA_SET_TYPE: commands.NO_DATA_SET,
            commands.STATUS: status,
            commands.ERROR_COMMENT: dimse.error_comment(detail),
        }
        if command.affected_sop_class_uid:
            elements[commands.AFFECTED_SOP_CLASS_UID] = command.affected_sop_class_uid
        return commands.encode(elements)

    async def _respond(self, context_id: int, command: bytes) -> None:
        await self._write(pdus.p_data(context_id, pdus.COMMAND | pdus.LAST, command))

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.limits.network_timeout):
                await self.writer.drain()
        except TimeoutError:
            self._abort(pdus.ABORT_REASON_NOT_SPECIFIED, "the requestor stopped reading")
            raise AssociationEnded from None

    async def _release(self) -> None:
        """A-RELEASE-RP, then let the requestor close (PS3.8: it closes the connection). A
        dataset still arriving is never stored: :meth:`run` discards it."""
        await self._write(pdus.A_RELEASE_RP)
        try:
            async with asyncio.timeout(RELEASE_LINGER):
                while await self.reader.read(65536):
                    pass
        except (TimeoutError, ConnectionError):
            pass
        self.writer.close()

    async def _answer_and_close(self, answer: bytes) -> None:
        self.writer.write(answer)
        try:
            async with asyncio.timeout(RELEASE_LINGER):
                await self.writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        self.writer.close()

    def _abort(self, reason: int, why: str) -> None:
        log.debug("aborting the association from %s: %s", self.address, why)
        transport = self.writer.transport
        if not transport.is_closing():
            transport.write(pdus.a_abort(pdus.ABORT_SOURCE_PROVIDER, reason))
            transport.close()  # the A-ABORT goes out first, then the connection closes

