"""API keys: created once and shown once, stored only as a SHA-256 digest.

Keys carry 256 random bits, so a plain (unsalted) SHA-256 is enough to make a stolen table
useless and lets a request find its key with one indexed lookup. Every authenticated request
also counts against its key's rate limit (``dfmscd_service.api.ratelimit``); the health probes need no key and
so are never limited.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.orm import Session

from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.ratelimit import enforce_rate_limit
from dfmscd_service.core.db import get_session
from dfmscd_service.core.models import ApiKey, new_id, utcnow

KEY_PREFIX = "dfk_"
_bearer = HTTPBearer(auto_error=False, description="an API key from `dfmscd keys create`")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_api_key(session: Session, name: str, owner_id: str | None = None) -> tuple[ApiKey, str]:
    """Create a key (its own owner unless ``owner_id`` is given); returns the row and the secret."""
    secret = generate_key()
    key_id = new_id("key")
    row = ApiKey(
        id=key_id,
        owner_id=owner_id or key_id,
        name=name,
        key_hash=hash_key(secret),
        prefix=secret[: len(KEY_PREFIX) + 6],
    )
    session.add(row)
    session.flush()
    return row, secret


def revoke_api_key(session: Session, key_id: str) -> bool:
    res = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return res.rowcount > 0  # type: ignore[attr-defined]


def lock_owner(session: Session, owner_id: str) -> None:
    """Serialise check-then-insert per tenant until the session commits (per-key limits).

    A no-op UPDATE of the owner's key rows: PostgreSQL row-locks them (a concurrent request
    waits, then its next statement sees the committed rows); SQLite takes its write lock.
    """
    session.execute(update(ApiKey).where(ApiKey.owner_id == owner_id).values(owner_id=ApiKey.owner_id))


def count_api_keys(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey)) or 0


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key and the tenant that owns every teacher and job it creates."""

    key_id: str
    owner_id: str
    name: str


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


_KEY_BY_HASH = (select(ApiKey.id, ApiKey.owner_id, ApiKey.name, ApiKey.revoked_at)
                .where(ApiKey.key_hash == bindparam("key_hash")))  # built once: its compiled form is cached


def credentials_hash(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The digest to look the key up by; 401 for a missing or non-Bearer header."""
    if credentials is None:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <api key>' header", _UNAUTHORIZED)
    if credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "unauthorized", "use 'Authorization: Bearer <api key>'", _UNAUTHORIZED)
    return hash_key(credentials.credentials)


def principal_of(row: Any) -> Principal:
    """The caller from its key's row (``id, owner_id, name, revoked_at``; None: no such key): 401
    for an unknown or revoked key, then the key's rate limit (429)."""
    if row is None:
        raise ApiError(401, "unauthorized", "invalid API key", _UNAUTHORIZED)
    if row.revoked_at is not None:
        raise ApiError(401, "unauthorized", "API key has been revoked", _UNAUTHORIZED)
    principal = Principal(key_id=row.id, owner_id=row.owner_id, name=row.name)
    # After the key check, so the counter is per known key and a wrong key is a 401, not a 429.
    enforce_rate_limit(principal.key_id)
    return principal


def authenticate(session: Session | Connection, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The key check (401 naming what is wrong) and then the key's rate limit (429).

    One indexed lookup per request, never cached: a revoked key must stop working at once,
    including from another process (``dfmscd keys revoke``)."""
    key_hash = credentials_hash(credentials)
    return principal_of(session.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first())


def require_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    session: Session = Depends(get_session),
) -> Principal:
    # The rollback ends the read transaction so the pooled connection goes back now. Otherwise
    # the request holds it while it waits for a threadpool thread to run its route, and under
    # load (200 clients) every thread ends up waiting for a connection held by a request waiting
    # for a thread: a deadlock that only the pool's 30 s timeout breaks, with 500s.
    try:
        principal = authenticate(session, credentials)
    finally:
        session.rollback()
    request.state.principal = principal
    return principal


async def bearer_credentials(
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> HTTPAuthorizationCredentials | None:
    """The raw ``Authorization`` header for routes that check the key themselves, in the same
    thread trip as their query (``dfmscd_service.api.reads.job_reads``, ``teacher_reads``)."""
    return credentials
