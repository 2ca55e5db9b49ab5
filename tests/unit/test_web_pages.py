"""The console's pages over a real ledger and configuration files (no browser): the login
redirect, rendering with a session, hostile values escaped, static files served locally."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.support.unitkit import delivery_rows, ingest_to
from tests.support.webkit import AUTH, TOKEN, WebKit, default_settings, make_webkit

from dde.store.records import DeliveryOutcome
from dde.store.states import DeliveryState
from dde.store.status_board import PublishedStatus
from dde.web.pages import NAVIGATION, STATIC_DIR, format_age, local_path

PAGES = [path for path, _, _ in NAVIGATION]
HOSTILE = "<script>alert(1)</script>"
ATTRIBUTE_BREAKER = '"><img src=x onerror=alert(2)>'


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


def log_in(client: TestClient) -> str:
    """Log in with the token; the session cookie stays in the client. Returns the CSRF token."""
    response = client.post("/login", json={"token": TOKEN})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def assert_escaped(html: str, value: str) -> None:
    """``value`` appears only escaped: never as markup."""
    assert value not in html
    escaped = (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace('"', "&#34;").replace("'", "&#39;"))
    assert escaped in html, f"{escaped!r} is not in the page"


# -- without a session -------------------------------------------------------------------
@pytest.mark.parametrize("path", PAGES)
def test_a_page_without_a_session_redirects_to_the_login(kit: WebKit, path: str) -> None:
    response = kit.client.get(path, follow_redirects=False)

    assert response.status_code == 303
    expected = "/login" if path == "/" else f"/login?next=%2F{path[1:]}"
    assert response.headers["location"] == expected


def test_the_redirect_keeps_the_query_and_ignores_a_forged_or_stale_cookie(kit: WebKit) -> None:
    response = kit.client.get("/ledger?patient_id=P%201", follow_redirects=False)
    assert response.headers["location"] == "/login?next=%2Fledger%3Fpatient_id%3DP%25201"

    kit.client.cookies.set("dde_session", "forged.value")
    assert kit.client.get("/", follow_redirects=False).status_code == 303
    head = kit.client.head("/rules", follow_redirects=False)
    assert head.status_code == 303


def test_a_bearer_token_alone_does_not_open_the_pages(kit: WebKit) -> None:
    response = kit.client.get("/", headers=AUTH, follow_redirects=False)

    assert response.status_code == 303
    assert kit.client.get("/api/stats", headers=AUTH).status_code == 200


def test_a_session_with_a_bearer_header_too_renders_the_page(kit: WebKit) -> None:
    csrf = log_in(kit.client)

    response = kit.client.get("/rules", headers=AUTH, follow_redirects=False)

    assert response.status_code == 200
    assert f'<meta name="csrf-token" content="{csrf}">' in response.text


def test_the_api_still_answers_401_json_without_credentials(kit: WebKit) -> None:
    response = kit.client.get("/api/endpoints", follow_redirects=False)

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_the_login_page_renders_and_keeps_next_on_this_site(kit: WebKit) -> None:
    response = kit.client.get("/login?next=/rules")

    assert response.status_code == 200
    assert 'name="next" value="/rules"' in response.text
    assert 'id="token" name="token" type="password"' in response.text
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    for forged in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "rules"):
        page = kit.client.get("/login", params={"next": forged}).text
        assert 'name="next" value="/"' in page, forged


def test_the_login_page_sends_a_logged_in_user_on(kit: WebKit) -> None:
    log_in(kit.client)

    response = kit.client.get("/login?next=/ledger", follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/ledger"


def test_a_wrong_token_is_refused_and_opens_nothing(kit: WebKit) -> None:
    response = kit.client.post("/login", json={"token": "wrong"})

    assert response.status_code == 401
    assert kit.client.get("/", follow_redirects=False).status_code == 303


# -- with a session ----------------------------------------------------------------------
@pytest.mark.parametrize("path,name,label", NAVIGATION)
def test_every_page_renders_with_a_session(kit: WebKit, path: str, name: str,
                                           label: str) -> None:
    csrf = log_in(kit.client)

    response = kit.client.get(path, follow_redirects=False)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert f'<meta name="csrf-token" content="{csrf}">' in html
    assert f'<a href="{path}" aria-current="page">{label}</a>' in html
    assert f"<title>{label} · Dynamic DICOM Endpoints</title>" in html
    assert response.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html) is None, \
        "no inline script (the Content-Security-Policy forbids it)"


@pytest.mark.parametrize("path", PAGES + ["/login"])
def test_everything_a_page_loads_is_served_here(kit: WebKit, path: str) -> None:
    if path != "/login":
        log_in(kit.client)
    html = kit.client.get(path).text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)

    assert not [u for u in urls if "//" in u], "no CDN, no other site"
    for url in {u for u in urls if u.startswith("/static/")}:
        asset = kit.client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] in (
            "text/css", "text/javascript", "application/javascript", "image/svg+xml"), url


def test_the_dashboard_shows_every_endpoint_the_queue_and_failures(kit: WebKit) -> None:
    ledger = kit.ledger
    failed = ingest_to(ledger, ["ORTHANC1"], ["ORTHANC-PROBE"])
    rows = delivery_rows(ledger, failed)
    ledger.queue.record_outcomes([DeliveryOutcome(rows["ORTHANC1"][0], DeliveryState.FAILED,
                                            "0xA700 out of resources"),
                            DeliveryOutcome(rows["ORTHANC-PROBE"][0], DeliveryState.DELIVERED)])
    ingest_to(ledger, ["ORTHANC2"])
    ledger.status_board.publish([PublishedStatus("ORTHANC1", "up", "closed", None, None, 12),
                                 PublishedStatus("ORTHANC2", "down", "open", time.time(),
                                                 "connection refused", None)])
    log_in(kit.client)

    html = kit.client.get("/").text

    for name in ("ORTHANC1", "ORTHANC2", "ORTHANC-PROBE"):
        assert f'<article class="card" data-endpoint="{name}">' in html
    assert '<dd data-field="load">12</dd>' in html
    assert 'data-field="health" data-value="down"' in html
    assert "connection refused" in html
    assert '<strong id="queued-total">1</strong>' in html
    assert '<strong id="failed-total">1</strong>' in html
    assert f'<tr data-delivery="{rows["ORTHANC1"][0]}">' in html
    assert "0xA700 out of resources" in html
    assert '<script type="application/json" id="stats-data">' in html


def test_the_rules_page_shows_the_active_document(kit: WebKit) -> None:
    kit.services.store.apply_rules("rules:\n  - name: everything\n    route: [ORTHANC1]\n")
    log_in(kit.client)

    html = kit.client.get("/rules").text

    assert "  - name: everything\n    route: [ORTHANC1]" in html
    assert '<span id="rule-names">everything</span>' in html


def test_a_session_change_made_from_a_page_needs_the_csrf_token_of_its_meta_tag(
        kit: WebKit) -> None:
    log_in(kit.client)
    html = kit.client.get("/endpoints").text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert csrf is not None

    refused = kit.client.patch("/api/endpoints/ORTHANC2", json={"state": "draining"})
    accepted = kit.client.patch("/api/endpoints/ORTHANC2", json={"state": "draining"},
                                headers={"X-CSRF-Token": csrf.group(1)})

    assert refused.status_code == 403
    assert accepted.status_code == 200
    page = kit.client.get("/endpoints").text
    assert 'data-field="state" data-value="draining">draining</span>' in page



def test_the_endpoints_page_says_which_endpoints_ask_for_storage_commitment(
        kit: WebKit) -> None:
    log_in(kit.client)
    html = kit.client.get("/endpoints").text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert csrf is not None and '<input name="storage_commitment" type="checkbox">' in html
    changed = kit.client.patch("/api/endpoints/ORTHANC2", json={"storage_commitment": True},
                               headers={"X-CSRF-Token": csrf.group(1)})
    assert changed.status_code == 200

    page = kit.client.get("/endpoints").text
    assert '<td data-field="kind">dicom, commitment</td>' in page
    assert '<td data-field="kind">dicom</td>' in page  # the others


# -- hostile values ----------------------------------------------------------------------
def test_hostile_values_are_escaped_in_every_server_rendered_page(tmp_path: Path) -> None:
    settings = default_settings(endpoints=[
        {"name": "ORTHANC1", "aet": "ORTHANC1", "port": 4242, "groups": ["storage", HOSTILE]},
        {"name": "ORTHANC-PROBE", "aet": "ORTHANC-PROBE", "port": 4244, "groups": ["probe"]},
    ])
    kit = make_webkit(tmp_path, settings)
    ledger = kit.ledger
    failed = ingest_to(ledger, ["ORTHANC1"], sop_instance_uid="1.2.3.4.5")
    [delivery] = delivery_rows(ledger, failed).values()
    ledger.queue.record_outcomes([DeliveryOutcome(delivery[0], DeliveryState.FAILED, HOSTILE)])
    ledger.status_board.publish([PublishedStatus("ORTHANC1", "down", "open", time.time(),
                                                 ATTRIBUTE_BREAKER, None)])
    kit.services.store.apply_rules(f"# </textarea>{HOSTILE}\nrules:\n  - name: all\n"
                                   "    route: [ORTHANC1]\n")
    log_in(kit.client)

    dashboard = kit.client.get("/").text
    assert_escaped(dashboard, HOSTILE)  # a group name and a delivery's last error
    assert_escaped(dashboard, ATTRIBUTE_BREAKER)  # an endpoint's last error
    embedded = dashboard.split('id="stats-data">')[1].split("</script>")[0]
    assert "<" not in embedded and "\\u003cscript\\u003e" in embedded
    assert_escaped(kit.client.get("/endpoints").text, HOSTILE)
    rules = kit.client.get("/rules").text
    assert_escaped(rules, f"</textarea>{HOSTILE}")
    assert rules.count("</textarea>") == 1
    ledger_page = kit.client.get("/ledger", params={"patient_id": ATTRIBUTE_BREAKER,
                                                    "study_uid": HOSTILE}).text
    assert_escaped(ledger_page, ATTRIBUTE_BREAKER)
    assert_escaped(ledger_page, HOSTILE)
    kit.client.cookies.clear()
    login = kit.client.get("/login", params={"next": f"/ledger?{ATTRIBUTE_BREAKER}"}).text
    assert_escaped(login, f"/ledger?{ATTRIBUTE_BREAKER}")


def test_the_scripts_never_write_markup() -> None:
    """Data reaches the DOM as text: no innerHTML (or its relatives) in any script."""
    for script in STATIC_DIR.glob("*.js"):
        source = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function"):
            assert sink not in source, f"{script.name} uses {sink}"


# -- helpers -----------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [
    ("/", "/"), ("/ledger?patient_id=1", "/ledger?patient_id=1"), (None, "/"), ("", "/"),
    ("//evil.example", "/"), ("https://evil.example/", "/"), ("/\\evil", "/"),
    ("javascript:alert(1)", "/"), ("ledger", "/"),
])
def test_local_path(value: str | None, expected: str) -> None:
    assert local_path(value) == expected


@pytest.mark.parametrize("seconds,expected", [
    (None, "—"), (0.4, "0 s"), (89, "89 s"), (120, "2 min"), (5399, "90 min"),
    (5400, "1.5 h"),
])
def test_format_age(seconds: float | None, expected: str) -> None:
    assert format_age(seconds) == expected
