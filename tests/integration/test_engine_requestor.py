"""The engine's association requestor (delivery's C-STORE SCU) against acceptors we did not
write: pynetdicom's SCP (several transfer syntaxes, a 1 KB maximum PDU), DCMTK's storescp
(bit-preserving), and hand-made misbehaving peers (silence, a peer that stops reading,
rejection, abort). Datasets must arrive byte for byte as in the spool file."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from tests.support.orthanc import wait_until
from tests.support.recording_scp import RecordingSCP
from tests.support.unitkit import run_coroutine, split_part10

from dde.config import DeliverySettings, EndpointSettings
from dde.dicom.engine import pdus
from dde.dicom.engine.negotiation import AssociationRejected, AssociationRequest, ProposedContext
from dde.dicom.engine.requestor import NoResponse, Requestor, SendStalled
from dde.endpoints.dicom_sender import DicomSender, c_echo
from dde.endpoints.sending import SendStatus, Shipment
from dde.synthetic import make_instance

CT = "1.2.840.10008.5.1.4.1.1.2"


def spool_file(folder: Path, syntax: str = ExplicitVRLittleEndian, rows: int = 64) -> Shipment:
    ds = make_instance(study_uid=generate_uid(), series_uid=generate_uid(), number=1,
                       rows=rows, columns=rows)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    if syntax == ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True, little_endian=False, implicit_vr=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    return Shipment(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)


class PynetdicomSCP:
    """pynetdicom's storage SCP in this process, keeping each received dataset's bytes."""

    def __init__(self, max_pdu: int = 16382) -> None:
        self.received: dict[str, bytes] = {}
        self.ae = AE(ae_title="PYNET")
        self.ae.maximum_pdu_size = max_pdu
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                       DeflatedExplicitVRLittleEndian):
            self.ae.add_supported_context(CT, syntax)
        self.ae.add_supported_context("1.2.840.10008.1.1")
        self.server: Any = None

    def _on_store(self, event: Any) -> int:
        self.received[str(event.request.AffectedSOPInstanceUID)] = \
            event.request.DataSet.getvalue()
        return 0

    def __enter__(self) -> PynetdicomSCP:
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()

    def endpoint(self) -> EndpointSettings:
        return EndpointSettings(name="pynet", aet="PYNET", host="127.0.0.1", port=self.port)


def sender(endpoint: EndpointSettings, timeout: float = 10.0) -> DicomSender:
    return DicomSender(endpoint, DeliverySettings(connect_timeout=timeout,
                                                  dimse_timeout=timeout), "DDE_TEST")


@pytest.mark.parametrize("max_pdu", [16382, 1024])
def test_datasets_reach_pynetdicom_byte_for_byte(tmp_path: Path, max_pdu: int) -> None:
    shipments = [spool_file(tmp_path, syntax) for syntax in (
        ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian)]
    with PynetdicomSCP(max_pdu) as scp:
        scu = sender(scp.endpoint())
        scu.prepare(shipments)
        results = [scu.send(s) for s in shipments]
        scu.release()
    assert [r.status for r in results] == [SendStatus.DELIVERED] * 4, results
    for shipment in shipments:
        expected = split_part10(shipment.path.read_bytes())[1]
        assert scp.received[shipment.sop_instance_uid] == expected


def test_a_context_the_destination_refuses_is_a_permanent_refusal(tmp_path: Path) -> None:
    mr = spool_file(tmp_path)
    mr = Shipment(mr.path, "1.2.840.10008.5.1.4.1.1.4", mr.sop_instance_uid,
                  mr.transfer_syntax_uid)
    with PynetdicomSCP() as scp:
        scu = sender(scp.endpoint())
        result = scu.send(mr)
        delivered = scu.send(spool_file(tmp_path))  # a new association for another pair
        scu.release()
    assert result.status is SendStatus.REFUSED and result.permanent
    assert "presentation context rejected" in result.detail
    assert delivered.status is SendStatus.DELIVERED


def test_c_echo_health_check(tmp_path: Path) -> None:
    with PynetdicomSCP() as scp:
        assert c_echo(scp.endpoint(), "DDE_TEST", 5) is None
        port = scp.port
    problem = c_echo(EndpointSettings(name="gone", aet="X", host="127.0.0.1", port=port),
                     "DDE_TEST", 2)
    assert problem is not None and "C-ECHO failed" in problem


def test_dcmtk_storescp_receives_the_bytes_unchanged(tmp_path: Path) -> None:
    shipments = [spool_file(tmp_path, syntax)
                 for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)]
    large = spool_file(tmp_path, ExplicitVRLittleEndian, rows=1024)  # 2 MB: many PDUs
    shipments.append(large)
    with RecordingSCP(tmp_path / "recorder", "RECORDER") as scp:
        endpoint = EndpointSettings(name="rec", aet="RECORDER", host="127.0.0.1",
                                    port=scp.port)
        scu = sender(endpoint)
        scu.prepare(shipments)
        results = [scu.send(s) for s in shipments]
        scu.release()
        assert all(r.status is SendStatus.DELIVERED for r in results), results
        received = wait_until(lambda: len(scp.files()) == 3 and scp.files(), 10,
                              "three files at storescp")
    by_uid = {s.sop_instance_uid: s for s in shipments}
    for path in received:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        sent = split_part10(by_uid[uid].path.read_bytes())
        got = split_part10(path.read_bytes())
        assert got == sent


# --- misbehaving peers -------------------------------------------------------------------

class RawAcceptor:
    """A TCP acceptor that answers an A-ASSOCIATE-RQ as told, then behaves as told."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.connections.append(conn)
        header = conn.recv(6, socket.MSG_WAITALL)
        body = conn.recv(int.from_bytes(header[2:6], "big"), socket.MSG_WAITALL)
        if self.answer == "reject":
            conn.sendall(bytes((3, 0, 0, 0, 0, 4, 0, 1, 1, 7)))  # called AE not recognised
            return
        rq = A_ASSOCIATE_RQ()
        rq.decode(header + body)
        primitive = rq.to_primitive()
        primitive.result = 0
        for context in primitive.presentation_context_definition_list:
            context.result = 0
            context.transfer_syntax = context.transfer_syntax[:1]
        primitive.presentation_context_definition_results_list = \
            primitive.presentation_context_definition_list
        ac = A_ASSOCIATE_AC()
        ac.from_primitive(primitive)
        conn.sendall(ac.encode())
        if self.answer == "abort":
            conn.sendall(pdus.a_abort(2, 0))
        self.stop.wait(30)  # "silent" and "deaf": never answer, never read

    def close(self) -> None:
        self.stop.set()
        for conn in self.connections:
            conn.close()
        self.listener.close()


@pytest.fixture
def acceptor(request: pytest.FixtureRequest) -> Iterator[RawAcceptor]:
    peer = RawAcceptor(request.param)
    yield peer
    peer.close()


def request() -> AssociationRequest:
    return AssociationRequest("PEER", "DDE_TEST", [ProposedContext(CT, (ExplicitVRLittleEndian,))])


async def open_to(port: int) -> Requestor:
    return await Requestor.open("127.0.0.1", port, request(), connect_timeout=5, send_timeout=1)


@pytest.mark.parametrize("acceptor", ["reject"], indirect=True)
def test_a_rejection_says_why(acceptor: RawAcceptor) -> None:
    with pytest.raises(AssociationRejected, match="called AE title not recognised"):
        run_coroutine(open_to(acceptor.port))


@pytest.mark.parametrize("acceptor", ["silent"], indirect=True)
def test_a_silent_acceptor_is_no_response_within_the_timeout(acceptor: RawAcceptor,
                                                            tmp_path: Path) -> None:
    shipment = spool_file(tmp_path)

    async def go() -> None:
        assoc = await open_to(acceptor.port)
        context = assoc.negotiated.context_for(CT, ExplicitVRLittleEndian)
        assert context is not None
        with pytest.raises(NoResponse, match="no C-STORE response within 0.5 s"):
            await assoc.c_store(shipment.path, context, shipment.sop_instance_uid,
                                response_timeout=0.5)
        assoc.abort()
    run_coroutine(go())


@pytest.mark.parametrize("acceptor", ["silent"], indirect=True)
def test_a_peer_that_stops_reading_stalls_the_send_within_its_timeout(
        acceptor: RawAcceptor, tmp_path: Path) -> None:
    big = spool_file(tmp_path, rows=4096)  # 32 MB: more than any socket buffer holds

    async def go() -> None:
        assoc = await open_to(acceptor.port)
        context = assoc.negotiated.context_for(CT, ExplicitVRLittleEndian)
        assert context is not None
        with pytest.raises(SendStalled):
            await assoc.c_store(big.path, context, big.sop_instance_uid, response_timeout=5)
        assoc.abort()
    run_coroutine(go())


@pytest.mark.parametrize("acceptor", ["silent"], indirect=True)
def test_abort_from_another_thread_ends_a_send_waiting_for_its_response(
        acceptor: RawAcceptor, tmp_path: Path) -> None:
    endpoint = EndpointSettings(name="peer", aet="PEER", host="127.0.0.1", port=acceptor.port)
    scu = sender(endpoint, timeout=60)
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(scu.send(spool_file(tmp_path))))
    thread.start()
    wait_until(lambda: acceptor.connections, 5, "the association")
    scu.abort()
    thread.join(10)
    assert not thread.is_alive(), "the send did not return after abort"
    assert outcome[0].status is SendStatus.REFUSED and not outcome[0].suspect
    scu.release()


@pytest.mark.parametrize("acceptor", ["abort"], indirect=True)
def test_an_abort_by_the_peer_is_a_refusal_to_retry(acceptor: RawAcceptor,
                                                    tmp_path: Path) -> None:
    endpoint = EndpointSettings(name="peer", aet="PEER", host="127.0.0.1", port=acceptor.port)
    scu = sender(endpoint)
    result = scu.send(spool_file(tmp_path))
    scu.release()
    assert result.status is SendStatus.REFUSED and not result.permanent
    assert "aborted" in result.detail

