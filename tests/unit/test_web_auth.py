"""The API token, bearer and session authentication, CSRF, and which paths are public."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.support.webkit import AUTH, TOKEN, WebKit, make_webkit

from dde.config import Home
from dde.web.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Authenticator,
    TokenError,
    load_token,
    token_file,
    token_location,
)

# Every route that needs a token: (method, path, a body that would otherwise be accepted).
PROTECTED = [
    ("GET", "/api/endpoints"),
    ("POST", "/api/endpoints"),
    ("PATCH", "/api/endpoints/ORTHANC1"),
    ("DELETE", "/api/endpoints/ORTHANC1"),
    ("GET", "/api/rules"),
    ("PUT", "/api/rules"),
    ("POST", "/api/route/explain"),
    ("POST", "/api/instances"),
    ("GET", "/api/instances"),
    ("GET", "/api/instances/1.2.3"),
    ("GET", "/api/queue"),
    ("POST", "/api/deliveries/1/retry"),
    ("POST", "/api/queue/retry-failed"),
    ("GET", "/api/stats"),
    ("GET", "/no/such/page"),
]
CHANGES = [(m, p) for m, p in PROTECTED if m not in ("GET", "HEAD")]


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


@pytest.fixture(autouse=True)
def no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DDE_API_TOKEN", raising=False)


def login(kit: WebKit) -> str:
    response = kit.client.post("/login", json={"token": TOKEN})
    assert response.status_code == 200, response.text
    csrf = response.json()["csrf_token"]
    assert isinstance(csrf, str) and len(csrf) >= 32
    return csrf


# -- the token file ------------------------------------------------------------------------
def test_a_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    home = Home(tmp_path)
    first = load_token(home)
    path = token_file(home)

    assert len(first) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_token(home) == first
    assert path.read_text().strip() == first
    assert token_location(home) == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["api-token"]  # no temporary left


def test_the_environment_token_wins_and_no_file_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDE_API_TOKEN", "  from-the-environment  ")
    home = Home(tmp_path)

    assert load_token(home) == "from-the-environment"
    assert not token_file(home).exists()
    assert token_location(home) == "$DDE_API_TOKEN"


def test_an_empty_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path)
    token_file(home).write_text("\n")
    with pytest.raises(TokenError, match="is empty"):
        load_token(home)
    monkeypatch.setenv("DDE_API_TOKEN", " ")
    with pytest.raises(TokenError, match="set but empty"):
        load_token(home)


def test_a_token_file_readable_by_others_is_made_private(tmp_path: Path) -> None:
    home = Home(tmp_path)
    path = token_file(home)
    path.write_text("shared-token-0123456789\n")
    os.chmod(path, 0o644)

    assert load_token(home) == "shared-token-0123456789"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_without_create_a_missing_token_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="start the router once"):
        load_token(Home(tmp_path), create=False)


# -- sessions ------------------------------------------------------------------------------
def test_a_session_cookie_is_signed_and_expires() -> None:
    now = [1000.0]
    auth = Authenticator("secret", session_seconds=60, clock=lambda: now[0])
    cookie, csrf = auth.new_session()

    principal = auth.session(cookie)
    assert principal is not None and principal.via == "session" and principal.csrf == csrf
    payload, _, signature = cookie.partition(".")
    assert auth.session(payload + "." + signature[:-2] + "AA") is None
    assert auth.session(payload[:-2] + "e30." + signature) is None
    assert Authenticator("another-secret").session(cookie) is None
    now[0] += 61
    assert auth.session(cookie) is None


# -- over HTTP -----------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_without_a_token_every_route_answers_401_json(kit: WebKit, method: str,
                                                      path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        response = kit.client.request(method, path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text


def test_a_wrong_bearer_is_refused_even_with_a_valid_session(kit: WebKit) -> None:
    login(kit)
    response = kit.client.get("/api/endpoints", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/docs", "/openapi.json"])
def test_public_paths_need_no_token(kit: WebKit, path: str) -> None:
    response = kit.client.get(path)
    assert response.status_code == 200, response.text


def test_openapi_lists_the_api(kit: WebKit) -> None:
    paths = kit.client.get("/openapi.json").json()["paths"]
    for expected in ("/api/endpoints", "/api/endpoints/{name}", "/api/rules",
                     "/api/route/explain", "/api/instances",
                     "/api/instances/{sop_instance_uid}", "/api/queue",
                     "/api/deliveries/{delivery_id}/retry", "/api/queue/retry-failed",
                     "/api/stats", "/healthz", "/metrics", "/login"):
        assert expected in paths, expected


def test_login_sets_an_httponly_strict_session_cookie(kit: WebKit) -> None:
    response = kit.client.post("/login", json={"token": TOKEN})

    assert response.status_code == 200
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith(f"{SESSION_COOKIE}="))
    csrf_cookie = next(c for c in cookies if c.startswith(f"{CSRF_COOKIE}="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
    assert "HttpOnly" not in csrf_cookie and "SameSite=strict" in csrf_cookie
    assert TOKEN not in response.text and all(TOKEN not in c for c in cookies)
    assert csrf_cookie.split(";")[0].split("=", 1)[1] == response.json()["csrf_token"]


def test_login_with_a_wrong_or_missing_token_is_401(kit: WebKit) -> None:
    for body in ({"token": "wrong"}, {"token": 5}, {}, ["x"]):
        response = kit.client.post("/login", json=body)
        assert response.status_code == 401, body
        assert response.json()["error"] == "unauthorized"
        assert SESSION_COOKIE not in kit.client.cookies
    response = kit.client.post("/login", content=b"token", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_a_login_form_redirects_only_within_the_site(kit: WebKit) -> None:
    ok = kit.client.post("/login", data={"token": TOKEN, "next": "/dashboard?x=1"},
                         follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/dashboard?x=1"
    assert SESSION_COOKIE in ok.cookies
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = kit.client.post("/login", data={"token": TOKEN, "next": target},
                                   follow_redirects=False)
        assert response.status_code == 200, target
        assert "location" not in response.headers


def test_a_session_reads_without_csrf(kit: WebKit) -> None:
    login(kit)
    response = kit.client.get("/api/endpoints")
    assert response.status_code == 200
    assert [e["name"] for e in response.json()] == ["ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"]


@pytest.mark.parametrize(("method", "path"), CHANGES)
def test_a_session_change_without_csrf_is_403(kit: WebKit, method: str, path: str) -> None:
    login(kit)
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        response = kit.client.request(method, path, headers=headers)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"] == "csrf_failed"


def test_a_session_change_with_the_csrf_header_or_form_field_passes(kit: WebKit) -> None:
    csrf = login(kit)
    response = kit.client.post("/api/queue/retry-failed", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200, response.text
    response = kit.client.post("/api/queue/retry-failed", data={"csrf_token": csrf})
    assert response.status_code == 200, response.text
    response = kit.client.post("/api/queue/retry-failed", data={"csrf_token": "wrong"})
    assert response.status_code == 403


def test_a_bearer_change_needs_no_csrf(kit: WebKit) -> None:
    response = kit.client.post("/api/queue/retry-failed", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"requeued": 0}


def test_logout_ends_the_session(kit: WebKit) -> None:
    csrf = login(kit)
    assert kit.client.get("/api/stats").status_code == 200
    response = kit.client.post("/logout", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200
    assert kit.client.get("/api/stats").status_code == 401


def test_an_anonymous_upload_is_refused_before_its_body_is_read(kit: WebKit) -> None:
    received: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"--x\r\n" * 1000, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/instances",
             "raw_path": b"/api/instances", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=x")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080)}
    # In a thread of its own: another test's sync Playwright may own this thread's loop.
    runner = threading.Thread(
        target=lambda: asyncio.run(kit.app(scope, receive, send)))  # type: ignore[arg-type]
    runner.start()
    runner.join(30)

    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 401
    assert received == []
    assert kit.spool_files() == []


def test_dde_token_prints_the_token(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dde.cli import main

    home = tmp_path / "home"
    first = CliRunner().invoke(main, ["--home", str(home), "token"])
    assert first.exit_code == 0, first.output
    token = first.stdout.strip()
    assert token == (home / "api-token").read_text().strip()
    assert CliRunner().invoke(main, ["--home", str(home), "token"]).stdout.strip() == token
    (home / "api-token").write_text("")
    broken = CliRunner().invoke(main, ["--home", str(home), "token"])
    assert broken.exit_code == 1 and "dde: error:" in broken.stderr and "empty" in broken.stderr
