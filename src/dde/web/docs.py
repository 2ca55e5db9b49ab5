"""``GET /docs``: the Swagger UI over ``/openapi.json``, served from the router itself.

Its script and stylesheet come from the ``swagger-ui-bundle-v2`` package (a pinned
dependency; Swagger UI 5, which reads OpenAPI 3.1) under ``/docs/assets/``, and the script
that starts it is ``static/docs.js``: the page loads nothing from another site (it works in
a network without internet access) and runs under the same Content-Security-Policy as the
console's pages (no inline script).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from dde.web.errors import not_found
from dde.web.pages import PAGE_HEADERS

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
ASSETS_DIR = Path(str(swagger_ui_path))
ASSETS_VERSION = ASSETS_DIR.name.removeprefix("swagger-ui-")
"""The Swagger UI version the package ships (its folder is named after it)."""
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
          "swagger-ui.css": "text/css; charset=utf-8"}
"""The files served from the package (not its demo page, which names other sites)."""


def docs_html(title: str, openapi_url: str) -> str:
    version = escape(ASSETS_VERSION)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)} - API</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css?v={version}">
<script src="{ASSETS_PATH}/swagger-ui-bundle.js?v={version}" defer></script>
<script src="/static/docs.js" defer></script>
</head>
<body>
<div id="swagger-ui" data-openapi-url="{escape(openapi_url)}"></div>
</body>
</html>
"""


def install(app: FastAPI) -> None:
    page = docs_html(app.title, app.openapi_url or "/openapi.json")

    @app.get(DOCS_PATH, include_in_schema=False, response_class=HTMLResponse)
    def swagger_ui() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    def swagger_ui_asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise not_found(f"no such file: {name}")
        return FileResponse(ASSETS_DIR / name, media_type=media_type, headers={
            "X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=86400"})
