"""Endpoint credentials and the API token never show: not in logs (DEBUG included) during
failing deliveries and health probes, not in ``dde endpoints list --json``, not in the API's
answers, not in ``repr`` of the settings."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.support.datagen import write_series
from tests.support.faults import deliveries
from tests.support.orthanc import STORESCU, free_port, wait_until
from tests.support.router import ROUTER_AET, router_settings, start_router
from tests.support.webkit import AUTH, TOKEN, default_settings, make_webkit

from dde.cli import main
from dde.config import ConfigError, Settings, parse_settings, settings_to_yaml

pytestmark = pytest.mark.integration

PASSWORD = "Pw-7f3c9e51-very-secret"
DICOM_PASSWORD = "Dicom-Pw-0d9b2a77"


def endpoints_with_credentials(closed_port: int) -> list[dict[str, object]]:
    return [
        {"name": "REST_PACS", "kind": "orthanc-rest", "aet": "REST_PACS",
         "url": f"http://127.0.0.1:{closed_port}", "groups": ["storage"],
         "username": "router", "password": PASSWORD},
        {"name": "DICOM_PACS", "aet": "DICOM_PACS", "host": "127.0.0.1",
         "port": closed_port, "groups": ["probe"], "username": "router",
         "password": DICOM_PASSWORD},
    ]


def assert_hidden(text: str) -> None:
    for secret in (PASSWORD, DICOM_PASSWORD, TOKEN):
        assert secret not in text


def secret_settings(closed_port: int) -> Settings:
    return router_settings([], None, endpoints=endpoints_with_credentials(closed_port),
                           routing={"mirror": ["DICOM_PACS"]},
                           # probed (and failing) often, but never marked down: the
                           # instances must be taken, not refused for want of a route
                           health={"interval_seconds": 0.2, "failure_threshold": 1000})


def test_repr_and_str_of_settings_hide_passwords() -> None:
    settings = secret_settings(9)
    for text in (repr(settings), str(settings), repr(settings.endpoints),
                 settings.model_dump_json(), str(settings.model_dump())):
        assert_hidden(text)
    # The configuration file itself must keep the password (it is where it lives).
    assert PASSWORD in settings_to_yaml(settings)


def test_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"endpoints": [{"name": "P", "aet": "P", "kind": "orthanc-rest",
                                       "url": f"http://router:{PASSWORD}@127.0.0.1:8042"}]},
                       environment=False)
    assert "username" in str(caught.value)
    assert_hidden(str(caught.value))


def test_failing_deliveries_and_probes_log_no_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("pynetdicom", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    router = start_router(tmp_path / "router", secret_settings(free_port()))
    try:
        files = write_series(tmp_path / "series", 2)
        sent = subprocess.run(
            [STORESCU, "-aet", "TEST_SCU", "-aec", ROUTER_AET, "127.0.0.1", str(router.port),
             *(str(f) for f in files)],
            env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True,
            timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def attempted() -> bool:
            text = "\n".join(r.getMessage() for r in list(caplog.records))
            return (len(deliveries(router.ledger)) == 4 and "REST_PACS unreachable" in text
                    and "DICOM_PACS unreachable" in text)

        wait_until(attempted, 60, "a failed attempt on both endpoints")
        rows = deliveries(router.ledger)
        assert_hidden(repr(rows))
        listed = CliRunner().invoke(main, ["--home", str(router.home.root),
                                           "endpoints", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        assert "REST_PACS" in listed.output
        assert_hidden(listed.output)
    finally:
        router.stop()
    messages = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}"
                         for r in caplog.records)
    assert "REST_PACS" in messages  # the failures were logged, at some level
    assert_hidden(messages)


def test_api_and_cli_never_show_credentials_or_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DDE_API_TOKEN", raising=False)
    caplog.set_level(logging.DEBUG)
    settings = default_settings(endpoints=endpoints_with_credentials(9),
                                routing={"mirror": ["DICOM_PACS"]})
    kit = make_webkit(tmp_path, settings)
    responses = [
        kit.client.get("/api/endpoints", headers=AUTH),
        kit.client.get("/api/endpoints/REST_PACS", headers=AUTH),
        kit.client.patch("/api/endpoints/REST_PACS", headers=AUTH, json={"weight": 2}),
        kit.client.get("/api/endpoints", headers={"Authorization": f"Bearer {TOKEN}x"}),
        kit.client.post("/api/endpoints", headers=AUTH,
                        json={"name": "X", "aet": "X", "host": "h", "port": 1,
                              "password": PASSWORD}),
    ]
    assert responses[0].status_code == 200
    assert {e["name"] for e in responses[0].json()} >= {"REST_PACS", "DICOM_PACS"}
    for response in responses:
        assert_hidden(response.text)
        assert_hidden(str(response.headers))
    listed = CliRunner().invoke(main, ["--home", str(kit.services.home.root),
                                       "endpoints", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert_hidden(listed.output)
    table = CliRunner().invoke(main, ["--home", str(kit.services.home.root),
                                      "endpoints", "list"])
    assert_hidden(table.output)
    # The password survived the PATCH (it is kept, only never shown).
    stored = kit.services.store.settings().endpoint("REST_PACS")
    assert stored is not None and stored.password is not None
    assert stored.password.get_secret_value() == PASSWORD
    assert_hidden("\n".join(r.getMessage() for r in caplog.records))
