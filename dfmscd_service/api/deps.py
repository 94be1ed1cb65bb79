"""What routes depend on, in one place: the request's session, the caller's key, and the lookups
that turn an id into a row the caller owns (404 otherwise, never 403: ids do not leak)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from dfmscd_service.api.auth import Principal, bearer_credentials, require_key
from dfmscd_service.api.http.errors import ApiError, not_found
from dfmscd_service.api.http.pagination import is_valid_id
from dfmscd_service.core.db import get_session
from dfmscd_service.core.models import Evaluation, EvaluationSet, Job, Teacher

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


def get_owned_evaluation_set(session: Session, principal: Principal, set_id: str) -> EvaluationSet:
    row = session.get(EvaluationSet, set_id) if is_valid_id(set_id, "evs") else None
    if row is None or row.owner_id != principal.owner_id:
        raise not_found("evaluation set", set_id)
    return row


def get_owned_evaluation(session: Session, principal: Principal, job: Job, evaluation_id: str) -> Evaluation:
    row = session.get(Evaluation, evaluation_id) if is_valid_id(evaluation_id, "evl") else None
    if row is None or row.owner_id != principal.owner_id or row.job_id != job.id:
        raise not_found("evaluation", evaluation_id)
    return row


def require_json(request: Request) -> None:
    """415 for a body that is not JSON (FastAPI would only say 'Input should be a valid dictionary')."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, "unsupported_media_type",
                       f"send the request body as JSON with 'Content-Type: application/json' (got {media or 'no content type'!r})")
