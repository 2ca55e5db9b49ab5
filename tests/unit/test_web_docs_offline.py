"""Issue item 15: ``/docs`` needs nothing from another site (an offline hospital network,
no third-party script on the admin origin): the Swagger UI's files are served by the router
from a pinned package, its start script is a static file, and the page has the pages' CSP."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from tests.support.webkit import WebKit, make_webkit

from dde.web import docs
from dde.web.pages import CONTENT_SECURITY_POLICY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def kit(tmp_path: Path) -> WebKit:
    return make_webkit(tmp_path)


def test_the_docs_page_loads_only_what_the_router_serves(kit: WebKit) -> None:
    response = kit.client.get("/docs")
    assert response.status_code == 200
    html = response.text
    assert "cdn" not in html.lower()
    assert not re.search(r"(src|href)=\"(https?:)?//", html), html
    sources = re.findall(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", html)
    links = re.findall(r"<link\b[^>]*\bhref=\"([^\"]+)\"", html)
    assert sources and all(s.startswith("/") for s in sources + links), (sources, links)
    # every script is a file: no inline script for the CSP to allow
    assert len(re.findall(r"<script\b", html)) == len(sources)
    for url in sources + links:
        served = kit.client.get(url)  # no token: the docs are public
        assert served.status_code == 200, url
        assert served.content, url


def test_the_docs_page_has_the_console_pages_csp(kit: WebKit) -> None:
    response = kit.client.get("/docs")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_swagger_ui_files_are_the_packaged_ones(kit: WebKit) -> None:
    script = kit.client.get(f"{docs.ASSETS_PATH}/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.content == (docs.ASSETS_DIR / "swagger-ui-bundle.js").read_bytes()
    css = kit.client.get(f"{docs.ASSETS_PATH}/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")
    # only those files: not the package's demo page (it names the petstore site)
    assert kit.client.get(f"{docs.ASSETS_PATH}/index.html").status_code == 404
    assert kit.client.get(f"{docs.ASSETS_PATH}/..%2F__init__.py").status_code == 404


def test_swagger_ui_reads_openapi_3_1_and_is_pinned(kit: WebKit) -> None:
    assert kit.client.get("/openapi.json").json()["openapi"].startswith("3.1")
    major = int(docs.ASSETS_VERSION.split(".")[0])
    assert major >= 5, "Swagger UI before 5 cannot render OpenAPI 3.1"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = [d for d in project["dependencies"] if d.startswith("swagger-ui-bundle")]
    assert pinned == [f"swagger-ui-bundle-v2=={docs.ASSETS_VERSION}"]


def test_the_start_script_is_static_and_reaches_no_other_site() -> None:
    script = (Path(docs.__file__).with_name("static") / "docs.js").read_text()
    assert "SwaggerUIBundle(" in script
    assert "validatorUrl: null" in script  # the default badge calls validator.swagger.io
    assert not re.search(r"https?://", script)


def test_fastapis_cdn_pages_are_gone(kit: WebKit) -> None:
    assert kit.client.get("/redoc").status_code in (401, 404)
    assert kit.client.get("/docs/oauth2-redirect").status_code in (401, 404)
