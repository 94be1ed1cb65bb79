"""The web dashboard: ``GET /`` answers the single page, ``/static/*`` its files.

Plain HTML, CSS and JavaScript modules shipped in the package (``static/``), with uPlot vendored
under ``static/vendor``: no build step, nothing from a CDN. The page calls the same public API
with ``Authorization: Bearer`` (the key stays in the browser's sessionStorage), so the dashboard
adds no endpoint and no authority of its own. ``/v1``, ``/docs``, ``/openapi.json`` and
``/healthz`` keep their routes: the dashboard only owns ``/`` and ``/static``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Only our own files: scripts, styles, fetches and images from this origin (blob: for the samples
# grid and downloads, which are fetched with the key and handed to the page as object URLs).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    """StaticFiles with the dashboard's security headers on every file."""

    def file_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)
        return response


def _index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


def mount_dashboard(app: FastAPI) -> None:
    """Add ``GET /`` and ``/static`` to ``app`` (after the API's routes, so they never shadow one)."""
    app.add_api_route("/", _index, methods=["GET"], include_in_schema=False)
    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
