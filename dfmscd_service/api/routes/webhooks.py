"""Webhook endpoints: create (secret shown once), list, read, delete, rotate the secret, enable
again, and the delivery log. Deliveries themselves are the worker's (worker/webhooks.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from dfmscd_service.api.auth import Principal, lock_owner
from dfmscd_service.api.deps import CurrentKey, SessionDep
from dfmscd_service.api.http.errors import ApiError, not_found
from dfmscd_service.api.http.pagination import PageParams, is_valid_id, keyset_page
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ErrorBody, Page
from dfmscd_service.core.models import WebhookDelivery, WebhookEndpoint, new_id, utcnow
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.webhook_urls import MAX_URL_LENGTH, UnsafeUrl, check_url
from dfmscd_service.core.webhooks import EVENT_TYPES, new_secret

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"], route_class=SessionReleasingRoute)
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 422, 429)}
EventType = Literal["job.running", "job.succeeded", "job.failed", "job.cancelled"]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, description="http(s) URL on a public address")
    events: list[EventType] = Field(min_length=1, description="the job events to send")

    @field_validator("events")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class EndpointOut(BaseModel):
    id: str
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int = Field(description="failed attempts since the last success")
    created_at: datetime
    updated_at: datetime


class EndpointSecret(BaseModel):
    id: str
    secret: str = Field(description="whsec_…: verify deliveries with it; shown only here")


class EndpointCreated(EndpointOut, EndpointSecret):
    pass


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryOut(BaseModel):
    id: str = Field(description="the webhook-id header; the same on every attempt")
    event_type: str
    job_id: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="null once succeeded or given up")
    attempt_log: list[AttemptOut] = Field(description="the most recent attempts, oldest first")
    created_at: datetime


def _out(e: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(id=e.id, url=e.url, events=list(e.events), enabled=e.enabled, disabled_reason=e.disabled_reason,
                       consecutive_failures=e.consecutive_failures, created_at=e.created_at, updated_at=e.updated_at)


def _delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id, event_type=d.event_type, job_id=d.job_id, status=d.status,  # type: ignore[arg-type]
        attempts=d.attempts, last_attempt_at=d.last_attempt_at, last_status_code=d.last_status_code,
        last_error=d.last_error, next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        attempt_log=[AttemptOut(**a) for a in d.attempt_log or []], created_at=d.created_at,
    )


def get_owned_endpoint(session: Session, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
    row = session.get(WebhookEndpoint, endpoint_id) if is_valid_id(endpoint_id, "whe") else None
    if row is None or row.owner_id != principal.owner_id:
        raise not_found("webhook endpoint", endpoint_id)
    return row


@router.post("", status_code=201, response_model=EndpointCreated, responses=_ERRORS)
def create_endpoint(body: EndpointCreate, principal: CurrentKey, session: SessionDep) -> Any:
    """Register a URL for job events. The answer's ``secret`` is shown this once (and on rotation)."""
    settings = get_settings()
    try:
        check_url(body.url, settings.webhook_allow_private)
    except UnsafeUrl as exc:
        raise ApiError(422, "invalid_url", f"body url: {exc}") from None
    lock_owner(session, principal.owner_id)  # held to the commit: the limit cannot be raced past
    count = session.scalar(select(func.count()).select_from(WebhookEndpoint)
                           .where(WebhookEndpoint.owner_id == principal.owner_id)) or 0
    if count >= settings.webhook_max_endpoints_per_key:
        raise ApiError(409, "too_many_endpoints",
                       f"{count} webhook endpoints; the limit per key is {settings.webhook_max_endpoints_per_key}")
    now = utcnow()
    row = WebhookEndpoint(id=new_id("whe"), owner_id=principal.owner_id, url=body.url, events=list(body.events),
                          secret=new_secret(), enabled=True, consecutive_failures=0, created_at=now, updated_at=now)
    session.add(row)
    session.commit()
    return EndpointCreated(**_out(row).model_dump(), secret=row.secret)


@router.get("", response_model=Page[EndpointOut], responses=_ERRORS)
def list_endpoints(principal: CurrentKey, session: SessionDep, page: PageParams = Depends()) -> Page[EndpointOut]:
    q = select(WebhookEndpoint).where(WebhookEndpoint.owner_id == principal.owner_id)
    rows, next_cursor = keyset_page(session, q, WebhookEndpoint.id, page)
    return Page[EndpointOut](data=[_out(e) for e in rows], has_more=next_cursor is not None, next=next_cursor)


@router.get("/{endpoint_id}", response_model=EndpointOut, responses=_ERRORS)
def get_endpoint(endpoint_id: str, principal: CurrentKey, session: SessionDep) -> EndpointOut:
    return _out(get_owned_endpoint(session, principal, endpoint_id))


@router.delete("/{endpoint_id}", status_code=204, responses=_ERRORS)
def delete_endpoint(endpoint_id: str, principal: CurrentKey, session: SessionDep) -> Response:
    """Delete the endpoint and its delivery log; pending deliveries are dropped with it."""
    row = get_owned_endpoint(session, principal, endpoint_id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == row.id))
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == row.id))
    session.commit()
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate-secret", response_model=EndpointSecret, responses=_ERRORS)
def rotate_secret(endpoint_id: str, principal: CurrentKey, session: SessionDep) -> EndpointSecret:
    """A new secret at once: every attempt from now on (retries too) is signed with it only."""
    row = get_owned_endpoint(session, principal, endpoint_id)
    secret = new_secret()
    session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == row.id)
                    .values(secret=secret, updated_at=utcnow()))
    session.commit()
    return EndpointSecret(id=row.id, secret=secret)


@router.post("/{endpoint_id}/enable", response_model=EndpointOut, responses=_ERRORS)
def enable_endpoint(endpoint_id: str, principal: CurrentKey, session: SessionDep) -> EndpointOut:
    """Turn a disabled endpoint back on (its failure count starts again); new events only."""
    row = get_owned_endpoint(session, principal, endpoint_id)
    session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == row.id).values(
        enabled=True, disabled_reason=None, consecutive_failures=0, failing_since=None, updated_at=utcnow()))
    session.commit()
    session.expire_all()
    return _out(get_owned_endpoint(session, principal, endpoint_id))


@router.get("/{endpoint_id}/deliveries", response_model=Page[DeliveryOut], responses=_ERRORS)
def list_deliveries(endpoint_id: str, principal: CurrentKey, session: SessionDep,
                    page: PageParams = Depends()) -> Page[DeliveryOut]:
    """The delivery log, newest first: attempts, last status code or error, next attempt."""
    row = get_owned_endpoint(session, principal, endpoint_id)
    q = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == row.id)
    rows, next_cursor = keyset_page(session, q, WebhookDelivery.id, page)
    return Page[DeliveryOut](data=[_delivery_out(d) for d in rows], has_more=next_cursor is not None, next=next_cursor)
