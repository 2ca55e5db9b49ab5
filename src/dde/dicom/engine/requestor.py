"""An association we request (the router as SCU): open, C-STORE a Part-10 file's dataset
as it lies on disk, C-ECHO, N-ACTION (storage commitment), release, abort.

The dataset is streamed from the file in P-DATA-TF PDUs sized to the acceptor's maximum
(never decoded, never re-encoded, never whole in memory). Every wait has a limit: the
connection and the A-ASSOCIATE answer (``connect_timeout``), each PDU's way out
(``send_timeout``: a peer that stops reading makes :class:`SendStalled`), each response
(``response_timeout``: :class:`NoResponse`). After any of those the association is
aborted; the caller starts a new one.

An SCP may send an N-EVENT-REPORT-RQ on this association while we wait for a response or
for the A-RELEASE-RP (a Storage Commitment SCP that reports on the N-ACTION's association):
its dataset is read, handed to ``on_event_report`` (whose status is answered in the
N-EVENT-REPORT-RSP), and the wait goes on. A report sent while the association is idle is
read at the next wait (the next response, or the release).
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dde.dicom import part10
from dde.dicom import status as dimse
from dde.dicom.commitment import (
    MAX_EVENT_INFORMATION_BYTES,
    REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
    STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE,
    CommitmentDataError,
    CommitmentReport,
    CommitmentRequest,
    decode_event_information,
    encode_action_information,
)
from dde.dicom.engine import commands, pdus, sockets
from dde.dicom.engine.commands import Command, CommandField
from dde.dicom.engine.negotiation import (
    AcceptedContext,
    AssociationRequest,
    Negotiated,
    decode_acceptance,
    decode_rejection,
    encode_request,
)
from dde.dicom.engine.pdus import PduType, ProtocolError

log = logging.getLogger(__name__)

FRAGMENT_CAP: Final = 1 << 20
"""The largest dataset fragment we put in one PDU when the acceptor sets no limit."""
RESPONSE_PDU_LIMIT: Final = 1 << 20
"""The largest PDU we read as a requestor (responses are small; A-ASSOCIATE-AC too)."""
WRITE_HIGH_WATER: Final = 4 << 20
MESSAGE_ID_MODULUS: Final = 0x10000


class AssociationAborted(ConnectionError):
    """The acceptor aborted the association (A-ABORT) or closed the connection."""


class NoResponse(TimeoutError):
    """No answer within the response timeout."""


class SendStalled(TimeoutError):
    """The acceptor stopped reading: a PDU could not be sent within the send timeout."""


@dataclass(frozen=True)
class Response:
    status: int
    error_comment: str | None
    command: Command


EventReportHandler = Callable[[CommitmentReport], int]
"""Takes a storage commitment report that came on this association; returns the status
of the N-EVENT-REPORT-RSP."""


@dataclass
class _IncomingReport:
    """An N-EVENT-REPORT-RQ whose dataset is arriving."""

    command: Command
    context_id: int
    dataset: bytearray


class Requestor:
    """One established association. Not thread-safe: one task uses it at a time; another
    thread stops it with ``loop.call_soon_threadsafe(requestor.abort)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 negotiated: Negotiated, *, send_timeout: float) -> None:
        self._reader = reader
        self._writer = writer
        self.negotiated = negotiated
        self._send_timeout = send_timeout
        self._message_id = 0
        self.closed = False
        self.on_event_report: EventReportHandler | None = None
        self._incoming: _IncomingReport | None = None
        self._fragments = bytearray()
        fragment = negotiated.peer_max_pdu - pdus.PDV_HEADER.size
        self.fragment_size = FRAGMENT_CAP if negotiated.peer_max_pdu <= 0 else max(
            1, min(FRAGMENT_CAP, fragment))
        """The most dataset bytes one PDV carries (the acceptor's maximum PDU, less the
        PDV header)."""

    @classmethod
    async def open(cls, host: str, port: int, request: AssociationRequest, *,
                   connect_timeout: float, send_timeout: float,
                   tls: ssl.SSLContext | None = None) -> Requestor:
        """Connect and negotiate; raise ``OSError`` (cannot connect),
        :class:`~dde.dicom.engine.negotiation.AssociationRejected`,
        :class:`AssociationAborted`, ``TimeoutError`` or :class:`ProtocolError`."""
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls is not None else None,
                limit=RESPONSE_PDU_LIMIT)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sockets.tune(writer, socket.SO_SNDBUF)
        try:
            writer.write(encode_request(request))
            async with asyncio.timeout(connect_timeout):
                pdu = await pdus.read_pdu(reader, RESPONSE_PDU_LIMIT)
        except BaseException:
            writer.transport.abort()
            raise
        if pdu.type == PduType.A_ASSOCIATE_AC:
            return cls(reader, writer, decode_acceptance(request, pdu.body),
                       send_timeout=send_timeout)
        writer.transport.abort()
        if pdu.type == PduType.A_ASSOCIATE_RJ:
            raise decode_rejection(pdu.body)
        if pdu.type == PduType.A_ABORT:
            raise AssociationAborted("the acceptor aborted the association request")
        raise ProtocolError(f"{PduType(pdu.type).name} in answer to an A-ASSOCIATE-RQ")

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % (MESSAGE_ID_MODULUS - 1) + 1
        return self._message_id

    async def _send(self, data: bytes | memoryview) -> None:
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER // 2:
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self._writer.drain()
            except TimeoutError:
                raise SendStalled(
                    f"the peer took nothing for {self._send_timeout:g} s") from None

    async def c_store(self, path: Path, context: AcceptedContext, sop_instance_uid: str, *,
                      response_timeout: float) -> Response:
        """Send the dataset of the Part-10 file at ``path`` as it is; raise ``OSError``
        for a file that cannot be read (nothing sent: the association stays usable),
        :class:`~dde.dicom.part10.NotPart10`, and the association errors."""
        with open(path, "rb") as stream:
            offset = part10.dataset_offset(stream)
            size = stream.seek(0, 2)
            if size <= offset:
                raise part10.NotPart10("the file has a file meta but no dataset")
            stream.seek(offset)
            message_id = self._next_message_id()
            command = commands.c_store_rq(message_id, context.abstract_syntax,
                                          sop_instance_uid)
            await self._send_dataset(
                stream, context.context_id, size - offset,
                pdus.p_data(context.context_id, pdus.COMMAND | pdus.LAST, command))
        return await self._response(message_id, CommandField.C_STORE_RSP, response_timeout)

    async def _send_dataset(self, stream: io.BufferedReader, context_id: int,
                            remaining: int, command: bytes) -> None:
        """The command PDU goes out in the same write as the first dataset fragment (one
        system call for a small instance, not two)."""
        capacity = min(self.fragment_size, remaining)
        start = len(command)
        buffer = bytearray(start + pdus.P_DATA_OVERHEAD + capacity)
        buffer[:start] = command
        view = memoryview(buffer)
        while remaining > 0:
            length = min(capacity, remaining)
            data = start + pdus.P_DATA_OVERHEAD
            got = stream.readinto(view[data:data + length])
            if got != length:
                raise ProtocolError("the spool file shrank while it was being sent")
            remaining -= length
            control = pdus.LAST if remaining == 0 else 0
            view[start:data] = pdus.p_data_header(context_id, control, length)
            # transport.write sends at once or copies what it could not send: the buffer
            # may be reused for the next fragment.
            await self._send(view[:data + length])
            if start:  # later fragments start at the front of the buffer
                start = 0
                view = memoryview(buffer)[:pdus.P_DATA_OVERHEAD + capacity]

    async def c_echo(self, *, response_timeout: float) -> Response:
        context = next((c for c in self.negotiated.accepted
                        if c.abstract_syntax == commands.VERIFICATION_SOP_CLASS), None)
        if context is None:
            raise ProtocolError("the acceptor did not accept the Verification SOP Class")
        message_id = self._next_message_id()
        await self._send(pdus.p_data(context.context_id, pdus.COMMAND | pdus.LAST,
                                     commands.c_echo_rq(message_id)))
        return await self._response(message_id, CommandField.C_ECHO_RSP, response_timeout)

    async def n_action(self, request: CommitmentRequest, *,
                       response_timeout: float) -> Response:
        """Request storage commitment (N-ACTION, Action Type 1, on the well-known SOP
        Instance) for ``request``'s instances; the answer says whether the SCP took the
        request, not whether it commits (that comes in an N-EVENT-REPORT)."""
        context = self.negotiated.context_of(STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS)
        if context is None:
            raise ProtocolError("the acceptor did not accept the Storage Commitment Push "
                                "Model SOP Class")
        message_id = self._next_message_id()
        command = commands.n_action_rq(message_id, STORAGE_COMMITMENT_PUSH_MODEL_SOP_CLASS,
                                       STORAGE_COMMITMENT_PUSH_MODEL_SOP_INSTANCE,
                                       REQUEST_STORAGE_COMMITMENT)
        dataset = encode_action_information(request, context.transfer_syntax)
        await self._send(pdus.p_data(context.context_id, pdus.COMMAND | pdus.LAST, command))
        for start in range(0, len(dataset), self.fragment_size):
            chunk = dataset[start:start + self.fragment_size]
            last = start + self.fragment_size >= len(dataset)
            await self._send(pdus.p_data(context.context_id, pdus.LAST if last else 0, chunk))
        return await self._response(message_id, CommandField.N_ACTION_RSP, response_timeout)

    async def _commands(self, body: bytes) -> list[Command]:
        """The complete commands of one P-DATA-TF (a command's fragments may span PDUs);
        an N-EVENT-REPORT-RQ and its dataset are taken here (answered when complete), a
        dataset nobody asked for is skipped."""
        complete: list[Command] = []
        for pdv in pdus.split_pdvs(body):
            if not pdv.is_command:
                await self._report_data(pdv)
                continue
            self._fragments += pdv.data
            if len(self._fragments) > commands.MAX_COMMAND_BYTES:
                raise ProtocolError("a command set is too long")
            if not pdv.is_last:
                continue
            command = commands.decode(self._fragments)
            self._fragments.clear()
            if command.command_field == CommandField.N_EVENT_REPORT_RQ:
                await self._report_begins(command, pdv.context_id)
            else:
                complete.append(command)
        return complete

    async def _response(self, message_id: int, expected: int, timeout: float) -> Response:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    pdu = await self._read()
                    for command in await self._commands(pdu.body):
                        if command.command_field != expected or \
                                command.responded_to != message_id:
                            continue  # not the answer to this request
                        status = command.status
                        if status is None:
                            raise ProtocolError("a response without Status")
                        return Response(status, command.error_comment, command)
        except TimeoutError:
            service = "-".join(CommandField(expected).name.split("_")[:-1])
            raise NoResponse(f"no {service} response within {timeout:g} s") from None
        except (ProtocolError, commands.CommandError) as exc:
            self.abort()
            raise ProtocolError(f"a response that cannot be read: {exc}") from None

    async def _report_begins(self, command: Command, context_id: int) -> None:
        """An N-EVENT-REPORT-RQ from the SCP on this association."""
        self._incoming = _IncomingReport(command, context_id, bytearray())
        if not command.has_data_set:
            await self._report_complete()

    async def _report_data(self, pdv: pdus.Pdv) -> None:
        incoming = self._incoming
        if incoming is None or incoming.context_id != pdv.context_id:
            return
        incoming.dataset += pdv.data
        if len(incoming.dataset) > MAX_EVENT_INFORMATION_BYTES:
            raise ProtocolError("an N-EVENT-REPORT dataset longer than any real one")
        if pdv.is_last:
            await self._report_complete()

    async def _report_complete(self) -> None:
        incoming, self._incoming = self._incoming, None
        assert incoming is not None
        command = incoming.command
        syntax = next((c.transfer_syntax for c in self.negotiated.accepted
                       if c.context_id == incoming.context_id), "")
        status = dimse.PROCESSING_FAILURE
        try:
            report = decode_event_information(bytes(incoming.dataset), syntax,
                                              command.event_type_id or 0)
            if self.on_event_report is not None:
                status = self.on_event_report(report)
        except CommitmentDataError as exc:
            log.warning("an N-EVENT-REPORT that cannot be read: %s", exc)
        except Exception:  # the boundary: the SCP is told, the association goes on
            log.exception("a storage commitment report could not be recorded")
        await self._send(pdus.p_data(incoming.context_id, pdus.COMMAND | pdus.LAST,
                                     commands.n_event_report_rsp(
                                         command.message_id or 0,
                                         command.affected_sop_class_uid or "",
                                         command.affected_sop_instance_uid or "", status,
                                         command.event_type_id)))

    async def _read(self) -> pdus.Pdu:
        """The next P-DATA-TF; anything else ends the association."""
        try:
            pdu = await pdus.read_pdu(self._reader, RESPONSE_PDU_LIMIT)
        except asyncio.IncompleteReadError:
            self.abort()
            raise AssociationAborted("the acceptor closed the connection") from None
        except ProtocolError:
            self.abort()
            raise
        if pdu.type == PduType.P_DATA_TF:
            return pdu
        self.abort()
        if pdu.type == PduType.A_ABORT:
            raise AssociationAborted("the acceptor aborted the association")
        raise ProtocolError(f"unexpected {PduType(pdu.type).name} from the acceptor")

    async def release(self, timeout: float) -> None:
        """A-RELEASE-RQ and wait for A-RELEASE-RP (an N-EVENT-REPORT in between is taken
        and answered, anything else ignored); abort when the acceptor does not answer in
        time. Never raises for a broken peer."""
        if self.closed:
            return
        try:
            self._writer.write(pdus.A_RELEASE_RQ)
            async with asyncio.timeout(timeout):
                while True:
                    pdu = await pdus.read_pdu(self._reader, RESPONSE_PDU_LIMIT)
                    if pdu.type in (PduType.A_RELEASE_RP, PduType.A_ABORT):
                        break
                    if pdu.type == PduType.P_DATA_TF:  # a report may still come (PS3.8 Sta7)
                        await self._commands(pdu.body)
                    if pdu.type == PduType.A_RELEASE_RQ:  # release collision (PS3.8 7.2)
                        self._writer.write(pdus.A_RELEASE_RP)
        except (TimeoutError, OSError, ProtocolError, commands.CommandError,
                asyncio.IncompleteReadError):
            self.abort()
            return
        self.closed = True
        self._writer.close()  # the requestor closes the connection after A-RELEASE-RP

    def abort(self) -> None:
        """Send A-ABORT (best effort) and drop the connection at once."""
        if self.closed:
            return
        self.closed = True
        transport = self._writer.transport
        try:
            if not transport.is_closing():
                transport.write(pdus.a_abort())
        except (OSError, RuntimeError):
            pass
        transport.abort()
