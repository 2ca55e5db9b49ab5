"""STOW-RS delivery (``dicomweb`` endpoints) against httpx's MockTransport: bundling, the
streamed multipart body, per-instance outcomes, retries, throttling and credentials."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from tests.support.stowkit import StowServer, spooled_shipment, stow_answer, write_secret

from dde.config import (
    DeliverySettings,
    EndpointKind,
    EndpointSettings,
    Settings,
    parse_settings,
    settings_to_data,
)
from dde.endpoints.dicomweb_sender import DicomWebSender
from dde.endpoints.load import LoadBook
from dde.endpoints.registry import describe
from dde.endpoints.sending import SendResult, SendStatus, Shipment
from dde.endpoints.stow_rs import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED
from dde.store.spool import Spool

URL = "http://pacs.example:8042/dicom-web"
TOKEN = "tok-3f9a1c0d5e7b2a4c6e8f"
PASSWORD = "pw-9d8c7b6a5f4e3d2c"


def endpoint(**extra: object) -> EndpointSettings:
    return EndpointSettings.model_validate(
        {"name": "WEB1", "kind": "dicomweb", "url": URL, **extra})


def sender_for(server: StowServer, ep: EndpointSettings | None = None,
               **delivery: object) -> DicomWebSender:
    return DicomWebSender(ep or endpoint(), DeliverySettings.model_validate(delivery),
                          server.transport)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def study(spool: Spool, count: int, study_uid: str = "1.2.3.100") -> list[Shipment]:
    return [spooled_shipment(spool, study_uid) for _ in range(count)]


def statuses(results: list[SendResult]) -> list[SendStatus]:
    return [r.status for r in results]


# -- configuration -------------------------------------------------------------------------

def test_a_dicomweb_endpoint_needs_a_url_and_takes_its_name_as_ae_title() -> None:
    assert endpoint().aet == "WEB1"
    assert endpoint().kind is EndpointKind.DICOMWEB
    with pytest.raises(ValueError, match="dicomweb endpoint needs a url"):
        EndpointSettings.model_validate({"name": "WEB1", "kind": "dicomweb"})


def test_one_kind_of_credential_at_a_time() -> None:
    with pytest.raises(ValueError, match="not both"):
        endpoint(token=TOKEN, username="u", password=PASSWORD)
    with pytest.raises(ValueError, match="password_file needs a username"):
        endpoint(password_file="/run/secrets/pw")


def test_dde_yaml_keeps_the_token_itself_and_only_the_path_of_a_secret_file() -> None:
    settings = Settings(endpoints=[endpoint(token=TOKEN),
                                   endpoint(name="WEB2", username="u",
                                            password_file="/run/secrets/pw")])

    data = settings_to_data(settings)

    assert data["endpoints"][0]["token"] == TOKEN
    assert data["endpoints"][1]["password_file"] == "/run/secrets/pw"
    assert "password" not in data["endpoints"][1]
    assert parse_settings(data).endpoints[0].token == endpoint(token=TOKEN).token


# -- the request ---------------------------------------------------------------------------

def test_a_study_goes_in_one_streamed_multipart_request(spool: Spool) -> None:
    server = StowServer()
    shipments = study(spool, 3)
    sender = sender_for(server)

    assert sender.bundles(shipments) == [[0, 1, 2]]
    results = sender.send_bundle(shipments)

    assert statuses(results) == [SendStatus.DELIVERED] * 3
    (request,) = server.requests
    assert request.method == "POST" and str(request.url) == f"{URL}/studies"
    assert request.headers["Content-Type"].startswith(
        'multipart/related; type="application/dicom"; boundary=')
    assert request.headers["Accept"] == "application/dicom+json"
    assert server.streamed == [True]  # a generator body: chunked, never one buffer
    assert request.headers.get("Transfer-Encoding") == "chunked"
    assert server.parts[0] == [s.path.read_bytes() for s in shipments]
    assert "Authorization" not in request.headers


def test_bundles_are_per_study_and_cut_by_size_and_count(spool: Spool) -> None:
    a = study(spool, 3, "1.2.3.1")
    b = study(spool, 2, "1.2.3.2")
    shipments = [a[0], b[0], a[1], b[1], a[2]]
    size = a[0].path.stat().st_size

    assert sender_for(StowServer()).bundles(shipments) == [[0, 2, 4], [1, 3]]
    assert sender_for(StowServer(), stow_max_instances=2).bundles(shipments) == [
        [0, 2], [4], [1, 3]]
    assert sender_for(StowServer(), stow_max_bytes=2 * size + 1).bundles(shipments) == [
        [0, 2], [4], [1, 3]]
    # an instance larger than the limit still goes, alone
    assert sender_for(StowServer(), stow_max_bytes=1).bundles(a) == [[0], [1], [2]]


def test_a_missing_spool_file_fails_alone(spool: Spool) -> None:
    server = StowServer()
    shipments = study(spool, 2)
    shipments[0].path.unlink()

    results = sender_for(server).send_bundle(shipments)

    assert results[0] == SendResult.refused("spool file is missing", permanent=True)
    assert results[1].status is SendStatus.DELIVERED
    assert server.request_uids() == [[shipments[1].sop_instance_uid]]


# -- the answer ----------------------------------------------------------------------------

def test_202_partial_failure_fails_only_the_named_instances_with_their_reason(
        spool: Spool) -> None:
    shipments = study(spool, 4)
    uids = [s.sop_instance_uid for s in shipments]
    server = StowServer(lambda request, sent: httpx.Response(202, json=stow_answer(
        [uids[0], uids[2]], {uids[1]: SOP_CLASS_NOT_SUPPORTED, uids[3]: OUT_OF_RESOURCES})))

    results = sender_for(server).send_bundle(shipments)

    assert statuses(results) == [SendStatus.DELIVERED, SendStatus.REFUSED,
                                 SendStatus.DELIVERED, SendStatus.REFUSED]
    assert results[1].detail == "STOW-RS failure 0x0122 (SOP class not supported)"
    assert results[1].permanent
    assert results[3].detail == "STOW-RS failure 0xA700 (Out of resources)"
    assert not results[3].permanent  # out of resources: worth another try later


def test_400_with_orthancs_itemised_answer_delivers_the_stored_ones(spool: Spool) -> None:
    """Orthanc's plugin answers 400 (no Content-Type) when one part lacks a mandatory tag,
    and stores the others: its reason is a decimal US value."""
    shipments = study(spool, 3)
    uids = [s.sop_instance_uid for s in shipments]
    body = json.dumps(stow_answer([uids[0], uids[2]], {uids[1]: CANNOT_UNDERSTAND}))
    server = StowServer(lambda request, sent: httpx.Response(400, content=body.encode()))

    results = sender_for(server).send_bundle(shipments)

    assert statuses(results) == [SendStatus.DELIVERED, SendStatus.REFUSED,
                                 SendStatus.DELIVERED]
    assert results[1] == SendResult.refused("STOW-RS failure 0xC000 (Cannot understand)",
                                            permanent=True)


def test_409_conflict_is_read_per_instance(spool: Spool) -> None:
    shipments = study(spool, 2)
    uid = shipments[0].sop_instance_uid
    server = StowServer(lambda request, sent: httpx.Response(
        409, json=stow_answer([], {u: 0xC122 for u in sent})))

    results = sender_for(server).send_bundle(shipments)

    assert all(r.status is SendStatus.REFUSED and r.permanent for r in results)
    assert "0xC122" in results[0].detail and uid


def test_an_instance_the_answer_does_not_name_is_not_delivered(spool: Spool) -> None:
    shipments = study(spool, 2)
    server = StowServer(lambda request, sent: httpx.Response(200, json=stow_answer(sent[:1])))

    results = sender_for(server).send_bundle(shipments)

    assert results[0].status is SendStatus.DELIVERED
    assert results[1].status is SendStatus.REFUSED and not results[1].permanent
    assert "not named in the STOW-RS answer" in results[1].detail


@pytest.mark.parametrize("body", [b"<html>login</html>", b"", b'{"00081199": 5}', b"[1, 2]"])
def test_a_200_that_is_no_stow_answer_delivers_nothing(spool: Spool, body: bytes) -> None:
    shipments = study(spool, 2)
    server = StowServer(lambda request, sent: httpx.Response(200, content=body))

    results = sender_for(server).send_bundle(shipments)

    assert all(r.status is SendStatus.REFUSED and not r.permanent for r in results)
    assert "check the endpoint's url" in results[0].detail


def test_an_unitemised_400_retries_each_instance_alone(spool: Spool) -> None:
    shipments = study(spool, 3)
    server = StowServer(lambda request, sent: httpx.Response(400, text="bad request"))

    several = sender_for(server).send_bundle(shipments)
    alone = sender_for(server).send(shipments[0])

    assert all(r.suspect and not r.permanent for r in several)
    assert "each is retried alone" in several[0].detail
    assert alone.permanent and not alone.suspect


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retried_later(spool: Spool, status: int) -> None:
    server = StowServer(lambda request, sent: httpx.Response(status))

    (result,) = sender_for(server).send_bundle(study(spool, 1))

    assert result.status is SendStatus.REFUSED and not result.permanent
    assert result.retry_after is None
    assert result.detail == f"HTTP {status}"


def test_429_with_retry_after_seconds_is_throttled(spool: Spool) -> None:
    server = StowServer(lambda request, sent: httpx.Response(429, headers={"Retry-After": "7"}))

    results = sender_for(server).send_bundle(study(spool, 2))

    assert [r.retry_after for r in results] == [7.0, 7.0]
    assert all(r.status is SendStatus.REFUSED and not r.permanent for r in results)


def test_503_with_an_http_date_retry_after_is_throttled(spool: Spool) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    server = StowServer(lambda request, sent: httpx.Response(503, headers={"Retry-After": when}))

    (result,) = sender_for(server).send_bundle(study(spool, 1))

    assert result.retry_after is not None and 100 < result.retry_after <= 120


def test_timeouts_are_retried_and_connection_failures_are_unreachable(spool: Spool) -> None:
    def timing_out(request: httpx.Request, sent: list[str]) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    def refusing(request: httpx.Request, sent: list[str]) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    (late,) = sender_for(StowServer(timing_out)).send_bundle(study(spool, 1))
    (down,) = sender_for(StowServer(refusing)).send_bundle(study(spool, 1))

    assert late.status is SendStatus.REFUSED and not late.permanent
    assert "no answer within" in late.detail
    assert down.status is SendStatus.UNREACHABLE


@pytest.mark.parametrize("status", [401, 403])
def test_credential_refusals_make_the_endpoint_unreachable(spool: Spool, status: int) -> None:
    (result,) = sender_for(StowServer(lambda r, s: httpx.Response(status))).send_bundle(
        study(spool, 1))

    assert result.status is SendStatus.UNREACHABLE
    assert "credentials" in result.detail


def test_404_says_the_url_is_wrong(spool: Spool) -> None:
    (result,) = sender_for(StowServer(lambda r, s: httpx.Response(404))).send_bundle(
        study(spool, 1))

    assert result.status is SendStatus.UNREACHABLE and "service root" in result.detail


# -- credentials ---------------------------------------------------------------------------

def test_bearer_token_from_the_settings_and_from_a_file(spool: Spool, tmp_path: Path) -> None:
    for ep in (endpoint(token=TOKEN),
               endpoint(token_file=write_secret(tmp_path, "token", TOKEN))):
        server = StowServer()
        sender_for(server, ep).send_bundle(study(spool, 1))
        assert server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_basic_auth_from_a_password_file(spool: Spool, tmp_path: Path) -> None:
    server = StowServer()
    ep = endpoint(username="router", password_file=write_secret(tmp_path, "pw", PASSWORD))

    sender_for(server, ep).send_bundle(study(spool, 1))

    expected = base64.b64encode(f"router:{PASSWORD}".encode()).decode()
    assert server.requests[0].headers["Authorization"] == f"Basic {expected}"


def test_an_unreadable_secret_file_is_unreachable_naming_the_file(spool: Spool,
                                                                  tmp_path: Path) -> None:
    ep = endpoint(token_file=str(tmp_path / "absent"))

    (result,) = sender_for(StowServer(), ep).send_bundle(study(spool, 1))

    assert result.status is SendStatus.UNREACHABLE
    assert str(tmp_path / "absent") in result.detail


def test_the_secrets_never_show_in_logs_settings_or_listings(
        spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ep = endpoint(token=TOKEN)
    def answering(code: int) -> StowServer:
        return StowServer(lambda request, sent: httpx.Response(code))

    for status in (200, 401, 500):
        sender_for(answering(status), ep).send_bundle(study(spool, 1))
    basic = endpoint(username="router", password=PASSWORD)
    sender_for(StowServer(lambda r, s: httpx.Response(403)), basic).send_bundle(study(spool, 1))

    listing = json.dumps(describe(Settings(endpoints=[ep]), None))
    shown = [caplog.text, repr(ep), str(ep), listing, repr(basic)]
    assert all(TOKEN not in text and PASSWORD not in text for text in shown)


# -- load ----------------------------------------------------------------------------------

def test_the_load_of_a_dicomweb_endpoint_is_its_qido_study_count() -> None:
    seen: list[httpx.Request] = []

    def qido(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{}, {}, {}])

    def client(ep: EndpointSettings) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(qido))

    book = LoadBook(60.0, client_factory=client)
    book.set_endpoints([endpoint(), endpoint(name="WEB2", qido_load=False)])
    book.poll_once()
    book.note_delivered("WEB1", 5)  # instances: not studies

    assert book.stored("WEB1") == 3
    assert book.stored("WEB2") == 0  # unknown: never asked
    assert [str(r.url) for r in seen] == [f"{URL}/studies"]
