"""Delivery through Orthanc's REST API, against httpx's MockTransport (no network)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.support.unitkit import generated

from dde.config import DeliverySettings, EndpointKind, EndpointSettings
from dde.endpoints.orthanc_sender import OrthancRestSender
from dde.endpoints.sending import SendStatus, Shipment
from dde.store.spool import Spool, encode_file_meta

PASSWORD = "s3cret-Pa55word"
Handler = Callable[[httpx.Request], httpx.Response]


class Orthanc:
    """A fake Orthanc REST API: records requests, answers with ``handler``."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.handler = handler or (lambda request: httpx.Response(
            200, json={"ID": "abc", "Status": "Success"}))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        self.requests.append(request)
        return self.handler(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def settings(**extra: object) -> EndpointSettings:
    return EndpointSettings(name="ORTHANC1", aet="ORTHANC1", kind=EndpointKind.ORTHANC_REST,
                            url="http://pacs.example:8042", **extra)  # type: ignore[arg-type]


def sender_for(orthanc: Orthanc, endpoint: EndpointSettings | None = None) -> OrthancRestSender:
    return OrthancRestSender(endpoint or settings(), DeliverySettings(), orthanc.transport)


@pytest.fixture
def shipment(tmp_path: Path) -> Shipment:
    instance = generated()
    spool = Spool(tmp_path / "spool")
    written = spool.write(encode_file_meta(instance.sop_class_uid, instance.sop_instance_uid,
                                           instance.transfer_syntax_uid), instance.dataset)
    return Shipment(spool.path_of(written.relative_path), instance.sop_class_uid,
                    instance.sop_instance_uid, instance.transfer_syntax_uid)


def orthanc_error(status: int, message: str) -> Handler:
    body = {"HttpError": "x", "HttpStatus": status, "Message": message, "Method": "POST",
            "OrthancError": message, "OrthancStatus": 15, "Uri": "/instances"}
    return lambda request: httpx.Response(status, json=body)


def test_200_is_delivered_and_the_body_is_the_spool_file(shipment: Shipment) -> None:
    orthanc = Orthanc()

    result = sender_for(orthanc).send(shipment)

    assert result.status is SendStatus.DELIVERED
    (request,) = orthanc.requests
    assert request.method == "POST"
    assert str(request.url) == "http://pacs.example:8042/instances"
    assert request.headers["Content-Type"] == "application/dicom"
    assert orthanc.bodies == [shipment.path.read_bytes()]
    assert "Authorization" not in request.headers


def test_the_client_is_reused_until_released(shipment: Shipment) -> None:
    orthanc = Orthanc()
    sender = sender_for(orthanc)

    first = sender.send(shipment)
    client = sender._http.current
    second = sender.send(shipment)

    assert first.status is second.status is SendStatus.DELIVERED
    assert client is not None and sender._http.current is client
    sender.release()
    assert sender._http.current is None and client.is_closed
    sender.release()  # twice is harmless
    assert sender.send(shipment).status is SendStatus.DELIVERED
    assert len(orthanc.requests) == 3


def test_400_is_a_permanent_refusal_with_orthancs_message(shipment: Shipment) -> None:
    result = sender_for(Orthanc(orthanc_error(400, "Bad file format"))).send(shipment)

    assert result.status is SendStatus.REFUSED
    assert result.permanent is True
    assert result.detail == "HTTP 400: Bad file format"


def test_error_without_json_still_says_the_status(shipment: Shipment) -> None:
    orthanc = Orthanc(lambda request: httpx.Response(415, text="<html>nope</html>"))

    result = sender_for(orthanc).send(shipment)

    assert (result.status, result.permanent, result.detail) == (
        SendStatus.REFUSED, True, "HTTP 415")


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_a_transient_refusal(shipment: Shipment, status: int) -> None:
    result = sender_for(Orthanc(orthanc_error(status, "Internal error"))).send(shipment)

    assert result.status is SendStatus.REFUSED
    assert result.permanent is False
    assert result.detail.startswith(f"HTTP {status}")


@pytest.mark.parametrize("status", [408, 429])
def test_timeout_and_too_many_requests_are_transient(shipment: Shipment, status: int) -> None:
    result = sender_for(Orthanc(lambda request: httpx.Response(status))).send(shipment)

    assert result.status is SendStatus.REFUSED
    assert result.permanent is False


def test_404_means_the_url_is_wrong_not_that_the_instance_is(shipment: Shipment) -> None:
    # Every instance would get the same answer: an endpoint problem, no attempt spent.
    result = sender_for(Orthanc(lambda request: httpx.Response(404))).send(shipment)

    assert result.status is SendStatus.UNREACHABLE
    assert "HTTP 404" in result.detail


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_unreachable_and_mentions_credentials(shipment: Shipment,
                                                              status: int) -> None:
    orthanc = Orthanc(lambda request: httpx.Response(status, text="Unauthorized"))

    result = sender_for(orthanc, settings(username="router", password=PASSWORD)).send(shipment)

    assert result.status is SendStatus.UNREACHABLE
    assert f"HTTP {status}" in result.detail
    assert "credentials" in result.detail
    assert PASSWORD not in result.detail


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                                   httpx.RemoteProtocolError("closed")])
def test_connection_errors_are_unreachable(shipment: Shipment, error: httpx.HTTPError) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    sender = sender_for(Orthanc(fail))

    result = sender.send(shipment)

    assert result.status is SendStatus.UNREACHABLE
    assert type(error).__name__ in result.detail
    assert sender._http.current is None  # the broken connection is dropped


def test_missing_spool_file_is_a_permanent_refusal(shipment: Shipment) -> None:
    orthanc = Orthanc()
    shipment.path.unlink()

    result = sender_for(orthanc).send(shipment)

    assert (result.status, result.permanent) == (SendStatus.REFUSED, True)
    assert orthanc.requests == []


def test_basic_auth_header_when_username_and_password_are_set(shipment: Shipment) -> None:
    orthanc = Orthanc()

    sender_for(orthanc, settings(username="router", password=PASSWORD)).send(shipment)

    expected = base64.b64encode(f"router:{PASSWORD}".encode()).decode()
    assert orthanc.requests[0].headers["Authorization"] == f"Basic {expected}"


def test_no_auth_header_with_a_username_alone(shipment: Shipment) -> None:
    orthanc = Orthanc()

    sender_for(orthanc, settings(username="router")).send(shipment)

    assert "Authorization" not in orthanc.requests[0].headers


def test_the_password_never_shows_in_the_settings() -> None:
    endpoint = settings(username="router", password=PASSWORD)

    shown = [str(endpoint), repr(endpoint), json.dumps(endpoint.model_dump(mode="json")),
             endpoint.model_dump_json(), str(endpoint.model_dump())]

    assert all(PASSWORD not in text for text in shown)
    assert endpoint.password is not None
    assert endpoint.password.get_secret_value() == PASSWORD


def test_an_endpoint_without_url_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a url"):
        EndpointSettings(name="X", aet="X", kind=EndpointKind.ORTHANC_REST)
    endpoint = EndpointSettings(name="X", aet="X", kind=EndpointKind.ORTHANC_REST,
                                url="http://127.0.0.1:1")

    with pytest.raises(ValueError, match="needs a url"):
        OrthancRestSender(endpoint.model_copy(update={"url": None}), DeliverySettings())
