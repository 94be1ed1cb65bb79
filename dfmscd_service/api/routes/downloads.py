"""Students of a job: metadata, the student report, files in every format and the samples grid.

A job that succeeded has every format stored by the worker (verified; a flagged INT8 file is
served with ``Dfmscd-Verification: flagged``; a refused float file is never served). A job that
ended before the worker exported every format (or was cancelled) serves its weights, and ONNX /
TorchScript exports made on first download (``services/exports.py``); it has no calibration
sample, so no INT8 file.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request, Response

from sqlalchemy import select

from dfmscd.formats import CALIBRATED_FORMATS, MODEL_FORMATS, NATIVE_FORMAT, file_name
from dfmscd_service.api.deps import CurrentKey, SessionDep, get_owned_job
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.http.ranges import file_response
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ErrorBody, StudentDetail, StudentReportOut
from dfmscd_service.api.services.exports import ensure_export
from dfmscd_service.api.views import student_detail, student_report_out
from dfmscd_service.core.models import Evaluation, Job, JobStatus, JobStudent
from dfmscd_service.core.storage import get_storage

router = APIRouter(prefix="/v1/jobs", tags=["students"], route_class=SessionReleasingRoute)
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 416, 422, 429, 503)}
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


@router.get("/{job_id}/students/{name}/report", response_model=StudentReportOut, responses=_ERRORS)
def get_student_report(job_id: str, name: str, principal: CurrentKey, session: SessionDep) -> StudentReportOut:
    """The student report (parameters, FLOPs, each file's size, CPU latency at batch 1 and 64, the CPU
    and its instruction sets, teacher agreement, verification figures) with its files and its
    accuracy on every evaluation set the job was evaluated on."""
    job = get_owned_job(session, principal, job_id)
    student = _student(job, name)
    found = session.scalars(select(Evaluation).where(Evaluation.job_id == job.id).order_by(Evaluation.id.desc()))
    return student_report_out(job.id, student, list(found))


def _no_calibrated_file(job: Job, name: str, fmt: str) -> ApiError:
    why = (f"job {job.id!r} was cancelled, and {fmt} files are made only when a job succeeds"
           if job.status == JobStatus.CANCELLED else
           f"job {job.id!r} ended before the worker exported every format at a job's end, so it kept no calibration "
           f"sample to quantize with; run the job again for {fmt}")
    return ApiError(409, "no_calibration_sample", f"student {name!r} has no {fmt} file: {why}")


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
    """The student in one format; ETag is the file's sha256; Range requests supported. A flagged INT8
    file comes with ``Dfmscd-Verification: flagged``; a format refused by verification is a 422."""
    job = get_owned_job(session, principal, job_id)
    student = _student(job, name)
    if not student.storage_key or not student.sha256:
        raise _no_weights(job, name)
    storage = get_storage()
    stored = next((f for f in student.files if f.format == format), None)
    headers: dict[str, str] = {}
    if stored is not None and (stored.status == "refused" or not stored.storage_key or not stored.sha256):
        raise ApiError(422, "export_refused", f"the {format} file of student {name!r} failed verification (or could "
                       f"not be exported) when the job ended; it is never served: {stored.error}")
    if stored is not None:
        headers["Dfmscd-Verification"] = stored.status
    if format == NATIVE_FORMAT:  # the student's weights: the row the job's JSON shows (the same file)
        key, digest = student.storage_key, student.sha256
    elif stored is not None:
        key, digest = stored.storage_key, stored.sha256
    elif format in CALIBRATED_FORMATS:
        raise _no_calibrated_file(job, name, format)
    else:  # a job without the worker's files: exported now, cached
        entry = ensure_export(session, storage, student, format)
        key, digest = entry["key"], entry["sha256"]
    response = file_response(request, storage, key, digest, "application/octet-stream", file_name(name, format))
    if response.status_code in (200, 206, 304):
        response.headers.update(headers)
    return response


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
