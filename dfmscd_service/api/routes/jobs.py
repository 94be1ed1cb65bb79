"""Jobs: create (validated up front, idempotent), list, read, cancel, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy import update

from dfmscd_service.api.deps import BearerCredentials, CurrentKey, SessionDep, get_owned_job, require_json
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.http.pagination import PageParams, page_params
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.reads import job_reads
from dfmscd_service.api.reads.fast_reads import fast_reads
from dfmscd_service.api.schemas import ErrorBody, JobCreate, JobOut, Page
from dfmscd_service.api.services import evaluations, job_service
from dfmscd_service.api.views import job_out
from dfmscd_service.core.models import JOB_STATUSES, Job, JobStatus, JobStudent, utcnow
from dfmscd_service.core.webhooks import record_job_event

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=SessionReleasingRoute)
_STATUS_ONE = "(" + "|".join(JOB_STATUSES) + ")"
_STATUS_LIST = f"^{_STATUS_ONE}(,{_STATUS_ONE})*$"
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 422, 429, 503)}
_CREATE_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 413, 415, 422, 429, 503)}


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@router.post("", status_code=202, response_model=JobOut, responses=_CREATE_ERRORS)
def create_job(
    body: JobCreate,
    response: Response,
    principal: CurrentKey,
    session: SessionDep,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1, max_length=255,
                                         pattern=r"^[\x21-\x7e]+$"),
    _json: None = Depends(require_json),
) -> JobOut:
    """Queue a distillation job. Same ``Idempotency-Key`` + same body → the same job."""
    job, replayed = job_service.create_job(session, principal, body, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job)


@router.get("", response_model=Page[JobOut], responses=_ERRORS)
async def list_jobs(
    request: Request,
    credentials: BearerCredentials,
    page: PageParams = Depends(page_params),
    status: str | None = Query(
        None, pattern=_STATUS_LIST, description="comma-separated statuses to keep, e.g. `running,queued`"
    ),
) -> Response:
    wanted: list[str] = []
    if status:
        wanted = [s.strip() for s in status.split(",") if s.strip()]
        bad = [s for s in wanted if s not in JOB_STATUSES]
        if bad or not wanted:
            raise ApiError(422, "validation_error", f"query status: unknown status {bad[0] if bad else status!r}; "
                           f"use {', '.join(JOB_STATUSES)}")

    question = ("jobs", page.after, page.limit, *wanted)
    return _json(await fast_reads(request).answer(credentials, question, job_reads.page_answer, page, wanted))


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS)
async def get_job(request: Request, job_id: str, credentials: BearerCredentials) -> Response:
    """A job's status, progress, students and report (the poll: cached bytes on the event loop while
    nothing changed, api/reads/fast_reads.py; else one query, then cached bytes, api/reads/job_reads.py)."""
    return _json(await fast_reads(request).answer(credentials, ("job", job_id), job_reads.poll_answer, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, responses=_ERRORS)
def cancel_job(
    job_id: str, principal: CurrentKey, session: SessionDep
) -> JobOut:
    """Cooperative cancel: a queued job is cancelled at once; a running one stops at its next step."""
    job = get_owned_job(session, principal, job_id)
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested_at=now, finished_at=now, updated_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if done:
        session.execute(update(JobStudent).where(JobStudent.job_id == job.id).values(status=JobStatus.CANCELLED))
        record_job_event(session, job.id, "job.cancelled")  # committed with the cancel, or not at all
    else:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.CANCELLING, cancel_requested_at=now, updated_at=now)
        )
    session.commit()
    session.expire_all()
    job = get_owned_job(session, principal, job_id)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ApiError(409, "job_finished", f"job {job_id!r} already {job.status}")
    return job_out(job)


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_ERRORS)
def delete_job(job_id: str, principal: CurrentKey, session: SessionDep) -> Response:
    """Delete a finished job and everything it stored (students in every format, samples, calibration
    sample, evaluations); 409 while it is queued or running (cancel it first)."""
    evaluations.delete_job(session, get_owned_job(session, principal, job_id))
    return Response(status_code=204)
