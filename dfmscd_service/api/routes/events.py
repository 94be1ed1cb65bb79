"""Job events: cursor-paged JSON, or a live Server-Sent Events stream that ends with the job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from dfmscd_service.api.deps import CurrentKey, SessionDep, get_owned_job
from dfmscd_service.api.http.errors import error_body
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ErrorBody, EventOut, Page
from dfmscd_service.api.views import event_out
from dfmscd_service.core.db import session_factory
from dfmscd_service.core.models import TERMINAL_STATUSES, ApiKey, Job, JobEvent
from dfmscd_service.core.settings import get_settings

router = APIRouter(prefix="/v1/jobs", tags=["events"], route_class=SessionReleasingRoute)
_BATCH = 500


def _fetch(job_id: str, after: int, limit: int, key_id: str | None = None) -> tuple[list[EventOut], str | None, bool]:
    """(events after ``after``, the job's status, whether ``key_id`` was revoked) in one session."""
    with session_factory()() as session:
        if key_id is not None:
            key = session.get(ApiKey, key_id)
            if key is None or key.revoked_at is not None:
                return [], None, True
        rows = list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.seq > after)
                .order_by(JobEvent.seq)
                .limit(limit)
            )
        )
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return [event_out(r) for r in rows], status, False


def _sse(event: EventOut) -> bytes:
    payload = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {payload}\n\n".encode()


async def _stream(request: Request, job_id: str, after: int, key_id: str) -> AsyncIterator[bytes]:
    settings = get_settings()
    last_sent = time.monotonic()
    draining = False
    yield b"retry: 2000\n\n"
    while True:
        events, status, revoked = await run_in_threadpool(_fetch, job_id, after, _BATCH, key_id)
        if revoked:  # a stream can outlive its key: revocation must end it too, not only later requests
            payload = json.dumps(error_body("unauthorized", "API key has been revoked"))
            yield f"event: error\ndata: {payload}\n\n".encode()
            return
        for e in events:
            yield _sse(e)
            after = e.id
        if events:
            last_sent = time.monotonic()
        if len(events) == _BATCH:
            continue
        if status is None or status in TERMINAL_STATUSES:
            # Status was read after the events: drain once more, then nothing can follow.
            if draining:
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n".encode()
                return
            draining = True
            continue
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent >= settings.sse_keepalive_seconds:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(settings.sse_poll_seconds)


@router.get(
    "/{job_id}/events",
    response_model=Page[EventOut],
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **{c: {"model": ErrorBody} for c in (400, 401, 404, 422, 429)},
    },
)
def list_events(
    request: Request,
    job_id: str,
    principal: CurrentKey,
    session: SessionDep,
    after: int | None = Query(None, ge=0, le=2**31 - 1, description="event id; events after it"),
    limit: int = Query(100, ge=1, le=1000),
    accept: str | None = Header(None),
    last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=64),
):  # type: ignore[no-untyped-def]
    """Progress, per-step metrics and log lines. ``Accept: text/event-stream`` streams them live
    (``id:`` is the event id; ``Last-Event-ID`` resumes) until the job is finished."""
    get_owned_job(session, principal, job_id)
    start = after or 0
    if accept and "text/event-stream" in accept:
        if last_event_id and last_event_id.strip().isdigit():  # anything else: as if absent
            start = max(start, int(last_event_id.strip()))
        session.close()
        return StreamingResponse(
            _stream(request, job_id, start, principal.key_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    session.close()  # _fetch has its own session: never hold two pooled connections on one thread
    events, _, _ = _fetch(job_id, start, limit + 1)
    more = len(events) > limit
    events = events[:limit]
    return Page[EventOut](data=events, has_more=more, next=str(events[-1].id) if more else None)
