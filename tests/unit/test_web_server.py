"""The HTTP server thread (loopback only): bound port, stop, a port in use, and the router
process serving its API with a token generated at first start."""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.webkit import AUTH, WebKit, make_webkit

from dde.config import Home, WebSettings, parse_settings, settings_to_yaml
from dde.runtime.main import RouterApp
from dde.web.auth import token_file
from dde.web.server import WebServer


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("DDE_API_TOKEN", "DDE_WEB_PORT", "DDE_WEB_HOST", "DDE_DICOM_PORT",
                     "DDE_DICOM_HOST", "DDE_AE_TITLE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def server(kit: WebKit) -> Iterator[WebServer]:
    web = WebServer(WebSettings(host="127.0.0.1", port=0), kit.app)
    web.start()
    yield web
    web.stop()


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_server_answers_on_its_bound_port_and_stops(server: WebServer) -> None:
    port = server.port
    assert port != 0 and server.running
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/api/endpoints").status_code == 401
        assert client.get("/api/endpoints", headers=AUTH).status_code == 200
        assert "server" not in client.get("/healthz").headers

    server.stop()

    assert not server.running and refused(port)


def test_a_port_in_use_fails_at_start_with_the_setting(kit: WebKit) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        web = WebServer(WebSettings(host="127.0.0.1", port=port), kit.app)
        with pytest.raises(OSError, match=rf"127.0.0.1:{port} \(web.port\)"):
            web.start()
        assert not web.running


def test_the_router_serves_http_with_a_generated_token(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    settings = parse_settings({"receiver": {"host": "127.0.0.1", "port": 0},
                               "endpoints": [], "routing": {"mirror": []},
                               "web": {"host": "127.0.0.1", "port": 0}})
    home.ensure()
    home.config_file.write_text(settings_to_yaml(settings))
    app = RouterApp(home, settings)
    path = token_file(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    app.start()
    try:
        assert app.web is not None
        base = f"http://127.0.0.1:{app.web.port}"
        with httpx.Client(base_url=base, trust_env=False) as client:
            health = client.get("/healthz")
            assert health.status_code == 200, health.text
            listed = client.get("/api/endpoints", headers={"Authorization": f"Bearer {token}"})
            assert listed.status_code == 200 and listed.json() == []
            assert "dde_received_instances_total 0.0" in client.get("/metrics").text
        port = app.web.port
    finally:
        app.stop()
    assert refused(port)


def test_the_web_part_can_be_disabled(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    settings = parse_settings({"receiver": {"host": "127.0.0.1", "port": 0},
                               "endpoints": [], "routing": {"mirror": []},
                               "web": {"enabled": False}})
    app = RouterApp(home, settings)
    app.start()
    try:
        assert app.web is None and app.metrics is None
        assert not token_file(home).exists()
    finally:
        app.stop()
