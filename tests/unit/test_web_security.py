"""Issue item 14: logins are limited per source address and failures logged (never what
was sent); a weak ``DDE_API_TOKEN`` is refused at start; logout needs the CSRF token and
ends the session on the router, so its old cookie and CSRF token are worthless."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.support.webkit import TOKEN, WebKit, make_webkit

from dde.config import Home
from dde.web.auth import (
    LOGIN_FAILURES,
    MIN_TOKEN_LENGTH,
    SESSION_COOKIE,
    Authenticator,
    LoginLimiter,
    TokenError,
    load_token,
    token_file,
)


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


# -- the rate limit and the log --------------------------------------------------------------
def test_failed_logins_are_limited_per_address_then_answered_429(kit: WebKit) -> None:
    for _ in range(LOGIN_FAILURES):
        assert kit.client.post("/login", json={"token": "wrong"}).status_code == 401
    refused = kit.client.post("/login", json={"token": "wrong"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "too_many_requests"
    assert int(refused.headers["retry-after"]) > 0
    # the right token does not get through a limited address either (no brute force)
    right = kit.client.post("/login", json={"token": TOKEN})
    assert right.status_code == 429
    assert SESSION_COOKIE not in right.cookies


def test_the_limiter_counts_each_address_and_forgets_after_its_window() -> None:
    now = [1000.0]
    limiter = LoginLimiter(failures=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60
    assert limiter.retry_after("10.0.0.2") is None  # another address is not held back
    now[0] += 30
    assert limiter.retry_after("10.0.0.1") == 30
    now[0] += 31
    assert limiter.retry_after("10.0.0.1") is None
    limiter.failed("10.0.0.2")
    limiter.succeeded("10.0.0.2")
    assert limiter.failed("10.0.0.2") == 1  # a success forgets the failures


def test_a_failed_login_is_logged_at_warning_without_the_token(
        kit: WebKit, caplog: pytest.LogCaptureFixture) -> None:
    sent = "a-guess-that-must-not-be-logged"
    with caplog.at_level(logging.INFO, logger="dde.web.auth"):
        assert kit.client.post("/login", json={"token": sent}).status_code == 401
        assert kit.client.post("/login", json={"token": TOKEN}).status_code == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "failed login from testclient" in warnings[0].getMessage()
    assert sent not in caplog.text and TOKEN not in caplog.text


# -- the token's strength ----------------------------------------------------------------------
@pytest.mark.parametrize("weak", ["a", "password1", "Q7" * ((MIN_TOKEN_LENGTH - 1) // 2)])
def test_a_weak_environment_token_is_refused_naming_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weak: str) -> None:
    monkeypatch.setenv("DDE_API_TOKEN", weak)
    with pytest.raises(TokenError, match=r"\$DDE_API_TOKEN is too weak.*at least 16") as info:
        load_token(Home(tmp_path))
    if len(weak) > 1:
        assert weak not in str(info.value)  # the value itself is never shown


def test_a_token_of_the_minimum_length_is_taken(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDE_API_TOKEN", "k" * MIN_TOKEN_LENGTH)
    assert load_token(Home(tmp_path)) == "k" * MIN_TOKEN_LENGTH


def test_a_weak_token_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    home = Home(tmp_path)
    token_file(home).write_text("short\n")
    with pytest.raises(TokenError, match="api-token is too weak"):
        load_token(home)


def test_the_router_refuses_to_start_with_a_weak_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dde.config import parse_settings
    from dde.runtime.main import RouterApp

    monkeypatch.setenv("DDE_API_TOKEN", "a")
    with pytest.raises(TokenError, match="DDE_API_TOKEN"):
        RouterApp(Home(tmp_path), parse_settings({}, environment=False))


# -- logout ------------------------------------------------------------------------------------
def login(kit: WebKit) -> tuple[str, str]:
    response = kit.client.post("/login", json={"token": TOKEN})
    assert response.status_code == 200, response.text
    return response.cookies[SESSION_COOKIE], str(response.json()["csrf_token"])


def test_logout_with_the_session_needs_the_csrf_header(kit: WebKit) -> None:
    login(kit)
    refused = kit.client.post("/logout")
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "csrf_failed"
    assert kit.client.get("/api/stats").status_code == 200  # still logged in


def test_logout_ends_the_session_on_the_router(kit: WebKit) -> None:
    cookie, csrf = login(kit)
    assert kit.client.post("/logout", headers={"X-CSRF-Token": csrf}).status_code == 200

    # a copy of the old cookie (a stolen one, or a browser that kept it) is worthless
    kit.client.cookies.set(SESSION_COOKIE, cookie)
    assert kit.client.get("/api/stats").status_code == 401
    replay = kit.client.post("/api/queue/retry-failed", headers={"X-CSRF-Token": csrf})
    assert replay.status_code == 401
    assert kit.client.get("/", follow_redirects=False).status_code == 303


def test_logout_of_one_session_leaves_the_others() -> None:
    auth = Authenticator(TOKEN)
    first, _ = auth.new_session()
    second, _ = auth.new_session()
    principal = auth.session(first)
    assert principal is not None and principal.session_id is not None
    auth.end_session(principal.session_id)
    assert auth.session(first) is None
    assert auth.session(second) is not None


def test_a_session_does_not_outlive_the_router() -> None:
    cookie, _ = Authenticator(TOKEN).new_session()
    assert Authenticator(TOKEN).session(cookie) is None
