"""Students of a job: metadata, weights (safetensors / ONNX / TorchScript) and the samples grid."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request, Response

from dfmscd.formats import MODEL_FORMATS, NATIVE_FORMAT, file_name
from dfmscd_service.api.deps import CurrentKey, SessionDep, get_owned_job
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.http.ranges import file_response
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ErrorBody, StudentDetail
from dfmscd_service.api.services.exports import ensure_export
from dfmscd_service.api.views import student_detail
from dfmscd_service.core.models import Job, JobStatus, JobStudent
from dfmscd_service.core.storage import get_storage

router = APIRouter(prefix="/v1/jobs", tags=["students"], route_class=SessionReleasingRoute)
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 416, 422, 429)}
_BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
FormatName = Literal[tuple(MODEL_FORMATS)]  # type: ignore[valid-type]  # the one table, dfmscd.formats


def _student(job: Job, name: str) -> JobStudent:
    for s in job.students:
        if s.name == name:
            return s
    names = ", ".join(repr(s.name) for s in job.students)
    raise ApiError(404, "not_found", f"student {name!r} not found in job {job.id!r}; its students are {names} "
                   "(the URL takes the student's name, which defaults to its architecture)")


def _no_weights(job: Job, name: str) -> ApiError:
    """Why there is nothing to download: still running, failed, or cancelled before any weights."""
    if job.status == JobStatus.CANCELLED:
        return ApiError(404, "not_ready", f"job {job.id!r} was cancelled before student {name!r} had weights; "
                        "nothing was stored for it")
    if job.status == JobStatus.FAILED:
        return ApiError(404, "not_ready", f"job {job.id!r} failed before student {name!r} had weights")
    return ApiError(404, "not_ready", f"student {name!r} has no weights yet (job is {job.status})")


@router.get("/{job_id}/students/{name}", response_model=StudentDetail, responses=_ERRORS)
def get_student(
    job_id: str, name: str, principal: CurrentKey, session: SessionDep
) -> StudentDetail:
    job = get_owned_job(session, principal, job_id)
    return student_detail(job.id, _student(job, name))


@router.get(
    "/{job_id}/students/{name}/weights",
    response_class=Response,
    responses={200: _BINARY, 206: _BINARY, 304: {"description": "not modified"}, **_ERRORS},
)
def download_weights(
    request: Request,
    job_id: str,
    name: str,
    principal: CurrentKey,
    session: SessionDep,
    format: FormatName = Query(NATIVE_FORMAT),
) -> Response:
    """The student's weights; ETag is the file's sha256; Range requests supported."""
    job = get_owned_job(session, principal, job_id)
    student = _student(job, name)
    if not student.storage_key or not student.sha256:
        raise _no_weights(job, name)
    storage = get_storage()
    if format == "safetensors":
        key, digest = student.storage_key, student.sha256
    else:
        entry = ensure_export(session, storage, student, format)
        key, digest = entry["key"], entry["sha256"]
    return file_response(request, storage, key, digest, "application/octet-stream", file_name(name, format))


@router.get(
    "/{job_id}/samples.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}, **_ERRORS},
)
def download_samples(
    request: Request, job_id: str, principal: CurrentKey, session: SessionDep
) -> Response:
    """A grid of synthesized images, a few per class (written when the job ends)."""
    job = get_owned_job(session, principal, job_id)
    if not job.samples_key:
        if job.status in (JobStatus.CANCELLED, JobStatus.FAILED):
            raise ApiError(404, "not_ready", f"job {job_id!r} {job.status} before it wrote samples; there will be none")
        raise ApiError(404, "not_ready", f"job {job_id!r} has no samples yet (status {job.status})")
    storage = get_storage()
    digest = job.samples_sha256 or job.id
    return file_response(request, storage, job.samples_key, digest, "image/png", f"{job_id}-samples.png")
