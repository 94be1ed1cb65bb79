"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: DB and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ErrorDetail, Health
from dfmscd_service.core.broker import ping_broker
from dfmscd_service.core.db import get_engine

router = APIRouter(tags=["health"], route_class=SessionReleasingRoute)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


def _check_db() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz() -> JSONResponse:
    checks: dict[str, str] = {}
    for name, fn in (("database", _check_db), ("broker", ping_broker)):
        try:
            await run_in_threadpool(fn)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks[name] = f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    ok = all(v == "ok" for v in checks.values())
    if ok:
        return JSONResponse(Health(status="ok", checks=checks).model_dump(exclude_none=True))
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    body = Health(status="unavailable", checks=checks, error=ErrorDetail(code="not_ready", message=f"unreachable: {failed}"))
    return JSONResponse(body.model_dump(), status_code=503)
