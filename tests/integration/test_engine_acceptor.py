"""The engine's acceptor (the router's C-STORE SCP) against misbehaving peers: bare
connections neither hold slots nor stay open, an incomplete dataset is never stored and
its file is removed, slots are free at once after an abort, an operation we do not offer
gets a failure status. Raw sockets speak the protocol here; DCMTK checks the real path."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.orthanc import wait_until
from tests.support.senders import read_pdu

from dde.config import ReceiverSettings
from dde.dicom import status as dimse
from dde.dicom.engine import commands, pdus
from dde.dicom.engine.commands import CommandField
from dde.dicom.engine.negotiation import AssociationRequest, ProposedContext, encode_request
from dde.receiving.ingest import IngestPipeline
from dde.receiving.scp import StorageSCP

pytestmark = pytest.mark.integration

ROUTER_AET = "DYNAMIC_DICOM_MW"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
ACSE_TIMEOUT = 2.0
MAX_ASSOCIATIONS = 2


class RecordingPipeline:
    """Stands in for ingest: records what reaches storage and answers success. The file
    is the pipeline's once handed over; this one does not keep it."""

    def __init__(self) -> None:
        self.stored: list[Any] = []

    def ingest(self, incoming: Any) -> Any:
        self.stored.append(incoming)
        incoming.dataset_file.unlink()
        return SimpleNamespace(status=dimse.SUCCESS, detail="stored")


@dataclass
class Receiver:
    scp: StorageSCP
    pipeline: RecordingPipeline
    incoming: Path

    @property
    def port(self) -> int:
        return self.scp.port


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    settings = ReceiverSettings(host="127.0.0.1", port=0, ae_title=ROUTER_AET,
                                acse_timeout=ACSE_TIMEOUT, network_timeout=5,
                                max_associations=MAX_ASSOCIATIONS, max_pdu_size=16384)
    pipeline = RecordingPipeline()
    scp = StorageSCP(settings, cast(IngestPipeline, pipeline), incoming_dir=tmp_path / "in")
    scp.start()
    try:
        yield Receiver(scp, pipeline, tmp_path / "in")
    finally:
        scp.stop()


def associated(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(encode_request(AssociationRequest(
        ROUTER_AET, "RAW", [ProposedContext(CT, (EXPLICIT,))])))
    answer = read_pdu(sock)
    assert answer[:1] == b"\x02", answer[:16]  # A-ASSOCIATE-AC
    return sock


def echo(port: int) -> bool:
    result = subprocess.run(["/usr/bin/echoscu", "-to", "5", "-aec", ROUTER_AET, "127.0.0.1",
                             str(port)], capture_output=True, timeout=30,
                            env={**os.environ, "TCP_NODELAY": "1"})
    return result.returncode == 0


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return True


def test_bare_connections_hold_no_slot_and_are_closed_soon(receiver: Receiver) -> None:
    bare = [socket.create_connection(("127.0.0.1", receiver.port)) for _ in range(40)]
    try:
        assert echo(receiver.port), "a real sender was locked out by bare connections"
        started = time.monotonic()
        for sock in bare:
            sock.settimeout(ACSE_TIMEOUT * 3)
            assert closed_by_peer(sock)
        assert time.monotonic() - started < ACSE_TIMEOUT * 3
    finally:
        for sock in bare:
            sock.close()


def store_command(message_id: int = 1, uid: str = "1.2.3.4") -> bytes:
    return pdus.p_data(1, pdus.COMMAND | pdus.LAST, commands.c_store_rq(message_id, CT, uid))


@pytest.mark.parametrize("ending", ["abort", "release", "close"])
def test_an_incomplete_dataset_is_never_stored_and_its_file_is_removed(
        receiver: Receiver, ending: str) -> None:
    sock = associated(receiver.port)
    sock.sendall(store_command() + pdus.p_data(1, 0, b"\x08\x00\x16\x00" + bytes(100)))
    wait_until(lambda: any(receiver.incoming.iterdir()), 5, "the dataset file being written")
    if ending == "abort":
        sock.sendall(pdus.a_abort())
    elif ending == "release":
        sock.sendall(pdus.A_RELEASE_RQ)
        assert read_pdu(sock)[:1] == b"\x06"  # A-RELEASE-RP, and no C-STORE-RSP before it
    sock.close()
    wait_until(lambda: not any(receiver.incoming.iterdir()), 5, "the partial file removed")
    assert receiver.pipeline.stored == []
    assert echo(receiver.port)


def test_slots_are_free_at_once_after_aborts(receiver: Receiver) -> None:
    for _ in range(3):
        held = [associated(receiver.port) for _ in range(MAX_ASSOCIATIONS)]
        third = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
        third.sendall(encode_request(AssociationRequest(
            ROUTER_AET, "RAW", [ProposedContext(CT, (EXPLICIT,))])))
        answer = read_pdu(third)
        assert answer[:1] == b"\x03" and answer[7:10] == bytes((2, 3, 2)), answer  # limit
        third.close()
        for sock in held:
            sock.sendall(pdus.a_abort())
            sock.close()
        wait_until(lambda: receiver.scp._server is not None
                   and receiver.scp._server.active_associations == 0, 5, "slots freed")


def test_a_complete_dataset_is_stored_once_and_answered(receiver: Receiver) -> None:
    sock = associated(receiver.port)
    dataset = b"\x08\x00\x18\x00\x55\x49\x08\x001.2.3.4\x00"
    sock.sendall(store_command(7) + pdus.p_data(1, 0, dataset[:5])
                 + pdus.p_data(1, pdus.LAST, dataset[5:]))
    response = read_pdu(sock)
    command = commands.decode(pdus.split_pdvs(response[6:])[0].data)
    assert (command.command_field, command.responded_to, command.status) == \
        (CommandField.C_STORE_RSP, 7, dimse.SUCCESS)
    [stored] = receiver.pipeline.stored
    assert stored.sop_instance_uid == "1.2.3.4" and stored.transfer_syntax_uid == EXPLICIT
    sock.sendall(pdus.A_RELEASE_RQ)
    assert read_pdu(sock)[:1] == b"\x06"
    sock.close()


def test_an_operation_we_do_not_offer_gets_a_failure_status(receiver: Receiver) -> None:
    sock = associated(receiver.port)
    find = commands.encode({commands.AFFECTED_SOP_CLASS_UID: CT,
                            commands.COMMAND_FIELD: CommandField.C_FIND_RQ,
                            commands.MESSAGE_ID: 3, commands.PRIORITY: 0,
                            commands.COMMAND_DATA_SET_TYPE: commands.DATA_SET_PRESENT})
    sock.sendall(pdus.p_data(1, pdus.COMMAND | pdus.LAST, find)
                 + pdus.p_data(1, pdus.LAST, b"\x10\x00\x10\x00\x00\x00\x00\x00"))
    response = commands.decode(pdus.split_pdvs(read_pdu(sock)[6:])[0].data)
    assert response.command_field == CommandField.C_FIND_RSP
    assert response.status == dimse.UNRECOGNIZED_OPERATION and response.responded_to == 3
    assert receiver.pipeline.stored == []
    sock.close()


def test_p_data_before_an_association_is_aborted(receiver: Receiver) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(store_command())
        answer = read_pdu(sock)
        assert answer[:1] == b"\x07"  # A-ABORT
        assert closed_by_peer(sock)
    assert receiver.pipeline.stored == []


def test_one_source_cannot_take_more_than_its_share(tmp_path: Path) -> None:
    settings = ReceiverSettings(host="127.0.0.1", port=0, ae_title=ROUTER_AET,
                                max_associations=4, max_share_per_source=0.5)
    scp = StorageSCP(settings, cast(IngestPipeline, RecordingPipeline()),
                     incoming_dir=tmp_path / "in")
    scp.start()
    try:
        held = [associated(scp.port) for _ in range(2)]
        third = socket.create_connection(("127.0.0.1", scp.port), timeout=10)
        third.sendall(encode_request(AssociationRequest(
            ROUTER_AET, "RAW", [ProposedContext(CT, (EXPLICIT,))])))
        assert read_pdu(third)[:1] == b"\x03"  # rejected: this address holds its share
        third.close()
        held.pop().close()
        wait_until(lambda: echo(scp.port), 5, "a slot for this address again")
        for sock in held:
            sock.close()
    finally:
        scp.stop()


# -- fuzzing the P-DATA path after a valid association ---------------------------------------

@st.composite
def pdv_runs(draw: st.DrawFn) -> tuple[bytes, bool]:
    """P-DATA-TF PDUs of C-STORE commands and dataset fragments in any order, with any
    control bits and context ids (1: accepted, 3: never proposed); and whether any dataset
    fragment carries the LAST bit (without one, no dataset is ever complete)."""
    pdus_out = b""
    any_last = False
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["command", "data", "data-last", "garbage-command"]))
        context = draw(st.sampled_from([1, 1, 1, 3]))
        if kind == "command":
            pdus_out += pdus.p_data(context, pdus.COMMAND | pdus.LAST,
                                    commands.c_store_rq(draw(st.integers(1, 9)), CT,
                                                        "1.2.3.4"))
        elif kind == "garbage-command":
            pdus_out += pdus.p_data(context, draw(st.sampled_from([pdus.COMMAND,
                                                                   pdus.COMMAND | pdus.LAST])),
                                    draw(st.binary(max_size=64)))
        else:
            last = kind == "data-last"
            any_last = any_last or last
            pdus_out += pdus.p_data(context, pdus.LAST if last else 0,
                                    draw(st.binary(min_size=1, max_size=256)))
    return pdus_out, any_last


@settings(derandomize=True, database=None, deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(run=pdv_runs(), ending=st.sampled_from(["abort", "release", "close"]))
def test_fuzzed_p_data_never_stores_an_incomplete_dataset(receiver: Receiver,
                                                          run: tuple[bytes, bool],
                                                          ending: str) -> None:
    payload, any_last = run
    before = len(receiver.pipeline.stored)
    sock = associated(receiver.port)
    try:
        sock.sendall(payload)
        sock.sendall({"abort": pdus.a_abort(), "release": pdus.A_RELEASE_RQ,
                      "close": b""}[ending])
    except OSError:
        pass  # the receiver aborted first: its right
    sock.close()
    wait_until(lambda: receiver.scp._server is not None
               and receiver.scp._server.active_associations == 0, 10, "the slot freed")
    if not any_last:
        assert len(receiver.pipeline.stored) == before  # no dataset was ever complete
    wait_until(lambda: not any(receiver.incoming.iterdir()), 5, "no partial file left")
