"""Signed webhooks, the shared half: event names, secrets, Standard Webhooks signatures, and
the outbox write that queues a job's event in the transaction that changed the job.

The API writes the outbox when it cancels a queued job; the worker when a job starts, ends or
fails. Delivery (dfmscd_service/worker/webhooks.py) happens later, in the worker's main process,
never in a request. See https://www.standardwebhooks.com for the wire format.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from dfmscd_service.core.job_view import job_out
from dfmscd_service.core.models import Job, WebhookDelivery, WebhookEndpoint, new_id, utcnow
from dfmscd_service.core.settings import get_settings

EVENT_TYPES = ("job.running", "job.succeeded", "job.failed", "job.cancelled")
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers, signed now (each attempt: receivers reject old stamps)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature(secret, msg_id, ts, body),
    }


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def event_body(event_type: str, job: Job, at: datetime) -> str:
    """``{"type", "timestamp", "data": JobOut}``, serialised once: every attempt sends these bytes."""
    data = job_out(job).model_dump(mode="json")
    return json.dumps({"type": event_type, "timestamp": _iso(at), "data": data}, separators=(",", ":"))


def record_job_event(session: Session, job_id: str, event_type: str) -> int:
    """Queue ``event_type`` for every enabled endpoint of the job's owner that asked for it.

    Call inside the transaction that changed the job's status, before its commit: the event is
    then stored exactly when the change is (the outbox pattern). Returns the deliveries queued.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event_type!r}")
    session.flush()
    owner_id = session.scalar(select(Job.owner_id).where(Job.id == job_id))
    if owner_id is None:
        return 0
    endpoints = [e for e in session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner_id, WebhookEndpoint.enabled.is_(True))
    ) if event_type in (e.events or [])]
    if not endpoints:
        return 0
    job = session.execute(
        select(Job).where(Job.id == job_id).options(selectinload(Job.students))
        .execution_options(populate_existing=True)
    ).scalar_one()
    now = utcnow()
    body = event_body(event_type, job, now)
    first = now + timedelta(seconds=get_settings().webhook_retry_schedule[0])
    for endpoint in endpoints:
        session.add(WebhookDelivery(
            id=new_id("msg"), endpoint_id=endpoint.id, job_id=job_id, event_type=event_type, payload=body,
            status="pending", attempts=0, next_attempt_at=first, attempt_log=[], created_at=now,
        ))
    session.flush()
    return len(endpoints)


def next_attempt_delay(attempts_made: int) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failures (None: give up)."""
    schedule = get_settings().webhook_retry_schedule
    return schedule[attempts_made] if attempts_made < len(schedule) else None
