"""What routes depend on, in one place: the request's session, the caller's key, and the lookups
that turn an id into a row the caller owns (404 otherwise, never 403: ids do not leak)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from dfmscd_service.api.auth import Principal, bearer_credentials, require_key
from dfmscd_service.api.http.errors import not_found
from dfmscd_service.api.http.pagination import is_valid_id
from dfmscd_service.core.db import get_session
from dfmscd_service.core.models import Job, Teacher

SessionDep = Annotated[Session, Depends(get_session)]
CurrentKey = Annotated[Principal, Depends(require_key)]
# For async routes that check the key in their own thread trip (dfmscd_service/api/reads/job_reads.py).
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_credentials)]


def get_owned_job(session: Session, principal: Principal, job_id: str) -> Job:
    # A malformed id (say with a NUL, which PostgreSQL text refuses) cannot name a row: 404 unread.
    job = session.get(Job, job_id) if is_valid_id(job_id, "job") else None
    if job is None or job.owner_id != principal.owner_id:
        raise not_found("job", job_id)
    return job


def get_owned_teacher(session: Session, principal: Principal, teacher_id: str) -> Teacher:
    row = session.get(Teacher, teacher_id) if is_valid_id(teacher_id, "tch") else None
    if row is None or row.owner_id != principal.owner_id:
        raise not_found("teacher", teacher_id)
    return row
