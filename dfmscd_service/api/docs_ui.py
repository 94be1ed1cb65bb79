"""``/docs`` (Swagger UI) served from files shipped in the package, never from a CDN.

FastAPI's default page loads swagger-ui from jsDelivr, which an air-gapped or firewalled server
cannot reach (a blank page). The assets are vendored under ``static/vendor/swagger-ui``
(swagger-ui-dist, Apache-2.0) and mounted at ``/docs-assets``; ReDoc, which would need a CDN
too, is turned off (``redoc_url=None`` in ``create_app``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

SWAGGER_DIR = Path(__file__).resolve().parent / "static" / "vendor" / "swagger-ui"
ASSETS_PATH = "/docs-assets"


def mount_docs(app: FastAPI, title: str) -> None:
    """``GET /docs`` and its assets; the app must be created with ``docs_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=SWAGGER_DIR), name="docs-assets")

    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - API docs",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
