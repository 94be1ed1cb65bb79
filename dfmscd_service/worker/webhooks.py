"""Delivers the webhook outbox: a thread in the worker's main process (like the sweeper).

Every ``webhook_poll_seconds`` it claims due deliveries with a conditional UPDATE (portable:
PostgreSQL and SQLite; two workers never claim the same message), POSTs each one signed
(Standard Webhooks headers, a fresh timestamp per attempt) with httpx, never following
redirects and only to an address checked just before the attempt, then records the attempt
and schedules the next one from ``webhook_retry_schedule``. At least once: a worker that dies
mid-attempt leaves the claim to expire and the message due again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

import dfmscd
from dfmscd_service.core.db import session_factory
from dfmscd_service.core.models import WebhookDelivery, WebhookEndpoint, utcnow
from dfmscd_service.core.settings import Settings, get_settings
from dfmscd_service.core.webhook_urls import UnsafeUrl, pinned_target
from dfmscd_service.core.webhooks import next_attempt_delay, signed_headers

log = logging.getLogger("dfmscd.worker")
BATCH = 32
CONCURRENCY = 4
ATTEMPT_LOG_LENGTH = 20
RETENTION = timedelta(days=30)  # finished deliveries are kept this long in the log


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.error is None


def claim_due(session: Session, token: str, settings: Settings, limit: int = BATCH) -> list[str]:
    """Ids of due deliveries this deliverer now holds; the claim pushes ``next_attempt_at`` past
    the attempt's longest duration, so an abandoned claim comes due again by itself."""
    now = utcnow()
    due = list(session.scalars(
        select(WebhookDelivery.id).join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
               WebhookEndpoint.enabled.is_(True))
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ))
    held_until = now + timedelta(seconds=settings.webhook_timeout_seconds * 2 + 60)
    claimed = []
    for delivery_id in due:
        res = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                   WebhookDelivery.next_attempt_at <= now)
            .values(next_attempt_at=held_until, claimed_by=token)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if res.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(delivery_id)
    return claimed


def post(client: httpx.Client, url: str, secret: str, msg_id: str, body: str, settings: Settings) -> Outcome:
    """One attempt. 2xx is success; a redirect is a failure (never followed: it could point inside)."""
    started = time.monotonic()

    def done(code: int | None, error: str | None) -> Outcome:
        return Outcome(code, error, round((time.monotonic() - started) * 1000, 1))

    try:
        target = pinned_target(url, settings.webhook_allow_private)
    except UnsafeUrl as exc:
        return done(None, f"refused: {exc}")
    headers = {**signed_headers(secret, msg_id, body), "content-type": "application/json",
               "user-agent": f"dfmscd-webhooks/{dfmscd.__version__}", **target.headers}
    try:
        # Streamed and closed unread: a receiver's answer body is never downloaded.
        with client.stream("POST", target.url, content=body.encode(), headers=headers,
                           extensions=target.extensions) as response:
            code = response.status_code
            location = response.headers.get("location", "")
    except httpx.TimeoutException:
        return done(None, f"timed out after {settings.webhook_timeout_seconds:g} s")
    except httpx.HTTPError as exc:
        return done(None, f"{type(exc).__name__}: {str(exc)[:300] or 'connection failed'}")
    if 200 <= code < 300:
        return done(code, None)
    if 300 <= code < 400:
        return done(code, f"HTTP {code}: redirect to {location[:300]!r} not followed")
    return done(code, f"HTTP {code}")


def record(sessions: sessionmaker[Session], delivery_id: str, token: str, outcome: Outcome,
           settings: Settings) -> None:
    """Store the attempt, schedule the next one (or give up), keep the endpoint's failure count,
    and disable an endpoint that failed ``webhook_disable_after_failures`` times in a row over at
    least ``webhook_disable_after_seconds``."""
    now = utcnow()
    with sessions() as s:
        d = s.get(WebhookDelivery, delivery_id)
        if d is None or d.claimed_by != token or d.status != "pending":
            return  # endpoint deleted meanwhile, or the claim expired and another deliverer took it
        attempts = d.attempts + 1
        entry = {"at": now.isoformat(), "status_code": outcome.status_code, "error": outcome.error,
                 "duration_ms": outcome.duration_ms}
        delay = None if outcome.ok else next_attempt_delay(attempts)
        status = "succeeded" if outcome.ok else ("pending" if delay is not None else "failed")
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.claimed_by == token)
                  .values(attempts=attempts, status=status, claimed_by=None, last_attempt_at=now,
                          last_status_code=outcome.status_code, last_error=outcome.error,
                          next_attempt_at=now + timedelta(seconds=delay) if delay is not None else None,
                          attempt_log=[*(d.attempt_log or [])[-(ATTEMPT_LOG_LENGTH - 1):], entry])
                  .execution_options(synchronize_session=False))
        ep = WebhookEndpoint.id == d.endpoint_id
        if outcome.ok:
            s.execute(update(WebhookEndpoint).where(ep, WebhookEndpoint.consecutive_failures != 0)
                      .values(consecutive_failures=0, failing_since=None))
        else:
            s.execute(update(WebhookEndpoint).where(ep).values(
                consecutive_failures=WebhookEndpoint.consecutive_failures + 1,
                failing_since=func.coalesce(WebhookEndpoint.failing_since, now)))
            _disable_if_failing(s, d.endpoint_id, now, settings)
        s.commit()


def _disable_if_failing(s: Session, endpoint_id: str, now, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    row = s.execute(select(WebhookEndpoint.enabled, WebhookEndpoint.consecutive_failures,
                           WebhookEndpoint.failing_since).where(WebhookEndpoint.id == endpoint_id)).one_or_none()
    if row is None or not row.enabled or row.consecutive_failures < settings.webhook_disable_after_failures:
        return
    if row.failing_since is None or (now - row.failing_since).total_seconds() < settings.webhook_disable_after_seconds:
        return
    reason = (f"disabled after {row.consecutive_failures} failed attempts in a row since "
              f"{row.failing_since.isoformat()}")
    s.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
              .values(enabled=False, disabled_reason=reason, updated_at=now))
    s.execute(update(WebhookDelivery)
              .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == "pending")
              .values(status="failed", next_attempt_at=None, last_error=f"not sent: endpoint {reason}")
              .execution_options(synchronize_session=False))
    log.warning("webhook endpoint %s %s", endpoint_id, reason)


def deliver_one(client: httpx.Client, sessions: sessionmaker[Session], delivery_id: str, token: str,
                settings: Settings) -> Outcome | None:
    with sessions() as s:
        row = s.execute(
            select(WebhookDelivery.payload, WebhookEndpoint.url, WebhookEndpoint.secret)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one_or_none()
    if row is None:
        return None
    outcome = post(client, row.url, row.secret, delivery_id, row.payload, settings)
    record(sessions, delivery_id, token, outcome, settings)
    log.info("webhook %s -> %s: %s", delivery_id, row.url, outcome.error or outcome.status_code)
    return outcome


def purge_old(sessions: sessionmaker[Session]) -> int:
    """Finished deliveries older than ``RETENTION`` leave the log."""
    with sessions() as s:
        res = s.execute(delete(WebhookDelivery).where(WebhookDelivery.status != "pending",
                                                      WebhookDelivery.created_at < utcnow() - RETENTION))
        s.commit()
        return res.rowcount or 0  # type: ignore[attr-defined]


class WebhookDeliverer(threading.Thread):
    """The loop: claim what is due, POST it on a few threads, repeat every ``webhook_poll_seconds``."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(name="dfmscd-webhooks", daemon=True)
        self.settings = settings or get_settings()
        self.stopped = threading.Event()
        self.token = f"whd-{uuid.uuid4().hex[:12]}"

    def run(self) -> None:
        s = self.settings
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per attempt is ours (deliver_one)
        timeout = httpx.Timeout(s.webhook_timeout_seconds)
        last_purge = 0.0
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client, \
                ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="dfmscd-webhook") as pool:
            while True:
                try:
                    sessions = session_factory()
                    with sessions() as session:
                        ids = claim_due(session, self.token, s)
                    list(pool.map(lambda i: deliver_one(client, sessions, i, self.token, s), ids))
                    if time.monotonic() - last_purge > 3600:
                        last_purge = time.monotonic()
                        purge_old(sessions)
                except Exception:  # noqa: BLE001 - the DB may be restarting; keep delivering
                    log.exception("webhook delivery round failed")
                if self.stopped.wait(s.webhook_poll_seconds):
                    return

    def stop(self) -> None:
        self.stopped.set()
