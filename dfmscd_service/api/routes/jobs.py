"""Jobs: create (validated up front, idempotent), list, read, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dfmscd_service.api.auth import Principal, lock_owner, require_key
from dfmscd_service.core.db import get_session
from dfmscd_service.api.errors import ApiError, not_found
from dfmscd_service.api.job_requests import JobPlan, plan_job, request_hash
from dfmscd_service.core.models import ACTIVE_STATUSES, JOB_STATUSES, IdempotencyKey, Job, JobStudent, Teacher, new_id, utcnow
from dfmscd_service.api.pagination import PageParams, is_valid_id, keyset_page
from dfmscd_service.core.broker import BrokerUnavailable, enqueue_job
from dfmscd_service.api.routes.teachers import get_owned_teacher
from dfmscd_service.api.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ErrorBody, JobCreate, JobOut, Page
from dfmscd_service.core.settings import get_settings
from dfmscd_service.api.views import job_out

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=SessionReleasingRoute)
_STATUS_ONE = "(" + "|".join(JOB_STATUSES) + ")"
_STATUS_LIST = f"^{_STATUS_ONE}(,{_STATUS_ONE})*$"
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 422, 429, 503)}
_CREATE_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 413, 415, 422, 429, 503)}


def require_json(request: Request) -> None:
    """415 for a body that is not JSON (FastAPI would only say 'Input should be a valid dictionary')."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise ApiError(415, "unsupported_media_type",
                       f"send the job as JSON with 'Content-Type: application/json' (got {media or 'no content type'!r})")


def get_owned_job(session: Session, principal: Principal, job_id: str) -> Job:
    job = session.get(Job, job_id) if is_valid_id(job_id, "job") else None
    if job is None or job.owner_id != principal.owner_id:
        raise not_found("job", job_id)
    return job


def _replay(session: Session, principal: Principal, key: str, digest: str) -> Job | None:
    row = session.get(IdempotencyKey, (principal.owner_id, key))
    if row is None:
        return None
    if row.request_hash != digest:
        raise ApiError(409, "idempotency_conflict", "Idempotency-Key was already used with a different request body")
    job = session.get(Job, row.job_id)
    if job is None:  # pragma: no cover - cascade deletes the key with its job
        return None
    return job


def _check_concurrency(session: Session, principal: Principal) -> None:
    limit = get_settings().max_concurrent_jobs_per_key
    if not limit:
        return
    lock_owner(session, principal.owner_id)  # held until the job is committed: no race past the limit
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner_id == principal.owner_id, Job.status.in_(ACTIVE_STATUSES))
    ) or 0
    if active >= limit:
        raise ApiError(
            429, "too_many_jobs", f"{active} active jobs; the limit per key is {limit}", {"Retry-After": "60"}
        )


def _new_job(principal: Principal, teacher: Teacher, body: JobCreate, plan: JobPlan) -> Job:
    job = Job(
        id=new_id("job"),
        owner_id=principal.owner_id,
        teacher_id=teacher.id,
        status="queued",
        preset=body.preset,
        config=plan.config.model_dump(mode="json"),
        budget=plan.budget.model_dump(mode="json", exclude_none=True),
        seed=plan.config.seed,
        job_metadata=plan.metadata,
        progress=0.0,
        epoch=0,
        attempts=0,
        enqueued_at=utcnow(),
    )
    job.students = [
        JobStudent(
            position=i,
            name=s.name,
            architecture=s.architecture,
            arch_kwargs=s.arch_kwargs,
            status="queued",
            partial=False,
            parameters=s.parameters,
            metrics={},
            exports={},
        )
        for i, s in enumerate(plan.students)
    ]
    return job


@router.post("", status_code=202, response_model=JobOut, responses=_CREATE_ERRORS)
def create_job(
    body: JobCreate,
    response: Response,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1, max_length=255,
                                         pattern=r"^[\x21-\x7e]+$"),
    principal: Principal = Depends(require_key),
    _json: None = Depends(require_json),
    session: Session = Depends(get_session),
) -> JobOut:
    """Queue a distillation job. Same ``Idempotency-Key`` + same body → the same job."""
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = _replay(session, principal, idempotency_key, digest)
        if existing is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return job_out(existing)

    try:
        teacher = get_owned_teacher(session, principal, body.teacher_id)
    except ApiError:
        raise ApiError(404, "not_found", f"teacher {body.teacher_id!r} not found") from None
    plan = plan_job(body, teacher, get_settings())
    _check_concurrency(session, principal)

    job = _new_job(principal, teacher, body, plan)
    try:
        session.add(job)
        session.flush()  # the job row first: the idempotency key references it
        if idempotency_key is not None:
            session.add(IdempotencyKey(owner_id=principal.owner_id, key=idempotency_key, request_hash=digest,
                                       job_id=job.id))
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is not None:  # a concurrent request with the same key won the race
            existing = _replay(session, principal, idempotency_key, digest)
            if existing is not None:
                response.headers["Idempotent-Replayed"] = "true"
                return job_out(existing)
        if session.get(Teacher, body.teacher_id) is None:
            raise ApiError(404, "not_found", f"teacher {body.teacher_id!r} not found") from None
        raise

    try:
        enqueue_job(job.id)
    except BrokerUnavailable:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "queued")
            .values(status="failed", error_code="broker_unavailable", error_message="the job queue is unreachable",
                    finished_at=utcnow())
        )
        session.commit()
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; try again", {"Retry-After": "10"}) from None
    return job_out(job)


@router.get("", response_model=Page[JobOut], responses=_ERRORS)
def list_jobs(
    page: PageParams = Depends(),
    status: str | None = Query(
        None, pattern=_STATUS_LIST, description="comma-separated statuses to keep, e.g. `running,queued`"
    ),
    principal: Principal = Depends(require_key),
    session: Session = Depends(get_session),
) -> Page[JobOut]:
    q = select(Job).where(Job.owner_id == principal.owner_id)
    if status:
        wanted = [s.strip() for s in status.split(",") if s.strip()]
        bad = [s for s in wanted if s not in JOB_STATUSES]
        if bad or not wanted:
            raise ApiError(422, "validation_error", f"query status: unknown status {bad[0] if bad else status!r}; "
                           f"use {', '.join(JOB_STATUSES)}")
        q = q.where(Job.status.in_(wanted))
    rows, next_cursor = keyset_page(session, q, Job.id, page)
    return Page[JobOut](data=[job_out(j) for j in rows], has_more=next_cursor is not None, next=next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS)
def get_job(job_id: str, principal: Principal = Depends(require_key), session: Session = Depends(get_session)) -> JobOut:
    return job_out(get_owned_job(session, principal, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, responses=_ERRORS)
def cancel_job(
    job_id: str, principal: Principal = Depends(require_key), session: Session = Depends(get_session)
) -> JobOut:
    """Cooperative cancel: a queued job is cancelled at once; a running one stops at its next step."""
    job = get_owned_job(session, principal, job_id)
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", cancel_requested_at=now, finished_at=now, updated_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if done:
        session.execute(update(JobStudent).where(JobStudent.job_id == job.id).values(status="cancelled"))
    else:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "running")
            .values(status="cancelling", cancel_requested_at=now, updated_at=now)
        )
    session.commit()
    session.expire_all()
    job = get_owned_job(session, principal, job_id)
    if job.status in ("succeeded", "failed"):
        raise ApiError(409, "job_finished", f"job {job_id!r} already {job.status}")
    return job_out(job)
