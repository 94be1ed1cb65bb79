"""Teachers: streamed upload with a size cap, validation by the library, then storage."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import func, select, update

from dfmscd_service.api.deps import BearerCredentials, CurrentKey, SessionDep, get_owned_teacher
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.http.pagination import PageParams, page_params
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.reads import teacher_reads
from dfmscd_service.api.reads.fast_reads import fast_reads
from dfmscd_service.api.schemas import ErrorBody, Page, TeacherOut
from dfmscd_service.api.services import teacher_service
from dfmscd_service.api.views import teacher_out
from dfmscd_service.core.models import ACTIVE_STATUSES, Job
from dfmscd_service.core.storage import get_storage
from dfmscd_service.core.storage_base import StorageUnavailable, teacher_prefix

log = logging.getLogger("dfmscd.api")
router = APIRouter(prefix="/v1/teachers", tags=["teachers"], route_class=SessionReleasingRoute)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "card"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "safetensors or weights-only .pt/.pth"},
                        "card": {"type": "string", "description": "model card JSON"},
                    },
                }
            }
        },
    }
}
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 413, 415, 422, 429)}


@router.post("", status_code=201, response_model=TeacherOut, openapi_extra=_UPLOAD_BODY, responses=_ERRORS)
async def upload_teacher(request: Request, principal: CurrentKey) -> TeacherOut:
    """Upload a teacher: multipart fields ``file`` (weights) and ``card`` (model card JSON)."""
    return teacher_out(await teacher_service.upload_teacher(request, principal))


@router.get("", response_model=Page[TeacherOut], responses=_ERRORS)
async def list_teachers(request: Request, credentials: BearerCredentials,
                        page: PageParams = Depends(page_params)) -> Response:
    """Your teachers, newest first (api/reads/fast_reads.py, else one query for the page, then cached
    bytes: api/reads/teacher_reads.py)."""
    question = ("teachers", page.after, page.limit)
    body = await fast_reads(request).answer(credentials, question, teacher_reads.page_answer, page)
    return Response(body, media_type="application/json")


@router.get("/{teacher_id}", response_model=TeacherOut, responses=_ERRORS)
def get_teacher(
    teacher_id: str, principal: CurrentKey, session: SessionDep
) -> TeacherOut:
    return teacher_out(get_owned_teacher(session, principal, teacher_id))


@router.delete("/{teacher_id}", status_code=204, response_class=Response, responses=_ERRORS)
def delete_teacher(
    teacher_id: str, principal: CurrentKey, session: SessionDep
) -> Response:
    """Delete a teacher and its file; refused (409) while a job that uses it is still active."""
    row = get_owned_teacher(session, principal, teacher_id)
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.teacher_id == row.id, Job.status.in_(ACTIVE_STATUSES))
    )
    if active:
        raise ApiError(409, "teacher_in_use", f"teacher {teacher_id!r} is used by {active} active job(s)")
    # Explicitly, not by the foreign key's ON DELETE SET NULL: this UPDATE bumps each job's
    # updated_at, the version the cached job answers are checked against (api/reads/answer_cache.py).
    session.execute(update(Job).where(Job.teacher_id == row.id).values(teacher_id=None))
    session.delete(row)
    session.commit()
    try:
        get_storage().delete_prefix(teacher_prefix(teacher_id))
    except StorageUnavailable:  # the row is gone, so is the teacher; its file is unreferenced debris
        log.warning("teacher %s deleted; its file stays in the unreachable bucket", teacher_id)
    return Response(status_code=204)
