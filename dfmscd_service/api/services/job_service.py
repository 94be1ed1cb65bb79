"""Creating a job: the rules behind ``POST /v1/jobs``, apart from HTTP (the route only maps them).

Same ``Idempotency-Key`` and same body give the same job, also when two such requests race;
the concurrency limit is checked under the owner's lock; the message goes to the broker only
after the row is committed, and a job the broker refused is marked failed, never left queued.
A seconds budget gets its advice (``job_advice``) from the costs workers measured before; a
budget below what the students need is a warning on the job, never a refusal. A named evaluation
set must fit the teacher's card (``evaluation_sets.check_fits``); the worker evaluates on it at the end.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dfmscd.io.card import ModelCard
from dfmscd_service.api.auth import Principal, lock_owner
from dfmscd_service.api.deps import get_owned_evaluation_set, get_owned_teacher
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.schemas import JobCreate
from dfmscd_service.api.services.evaluation_sets import check_fits
from dfmscd_service.api.services.job_advice import budget_advice
from dfmscd_service.api.services.job_requests import JobPlan, plan_job, request_hash
from dfmscd_service.core.broker import BrokerUnavailable, enqueue_job
from dfmscd_service.core.models import ACTIVE_STATUSES, IdempotencyKey, Job, JobStatus, JobStudent, Teacher, new_id, utcnow
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.webhooks import record_job_event


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


def _new_job(principal: Principal, teacher: Teacher, body: JobCreate, plan: JobPlan,
             advice: dict[str, Any] | None) -> Job:
    job = Job(
        id=new_id("job"),
        owner_id=principal.owner_id,
        teacher_id=teacher.id,
        status=JobStatus.QUEUED,
        preset=body.preset,
        config=plan.config.model_dump(mode="json"),
        budget=plan.budget.model_dump(mode="json", exclude_none=True),
        seed=plan.config.seed,
        job_metadata=plan.metadata,
        progress=0.0,
        epoch=0,
        attempts=0,
        enqueued_at=utcnow(),
        warnings=plan.warnings or None,
        advice=advice,
        evaluation_set_id=body.evaluation_set_id,
    )
    job.students = [
        JobStudent(
            position=i,
            name=s.name,
            architecture=s.architecture,
            arch_kwargs=s.arch_kwargs,
            status=JobStatus.QUEUED,
            partial=False,
            parameters=s.parameters,
            metrics={},
            exports={},
        )
        for i, s in enumerate(plan.students)
    ]
    return job


def create_job(session: Session, principal: Principal, body: JobCreate, idempotency_key: str | None) -> tuple[Job, bool]:
    """(the job, whether it is an idempotent replay of an earlier request)."""
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = _replay(session, principal, idempotency_key, digest)
        if existing is not None:
            return existing, True

    try:
        teacher = get_owned_teacher(session, principal, body.teacher_id)
    except ApiError:
        raise ApiError(404, "not_found", f"teacher {body.teacher_id!r} not found") from None
    settings = get_settings()
    plan = plan_job(body, teacher, settings)
    if body.evaluation_set_id is not None:  # read in the torch pool: 422 unless it fits the teacher's card
        check_fits(session, get_owned_evaluation_set(session, principal, body.evaluation_set_id), dict(teacher.card))
    advice = budget_advice(session, plan, ModelCard.model_validate(teacher.card), settings)
    if advice is not None and advice.get("below_floor"):
        plan.warnings.append(advice["message"])
    _check_concurrency(session, principal)

    job = _new_job(principal, teacher, body, plan, advice)
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
                return existing, True
        if session.get(Teacher, body.teacher_id) is None:
            raise ApiError(404, "not_found", f"teacher {body.teacher_id!r} not found") from None
        raise

    try:
        enqueue_job(job.id)
    except BrokerUnavailable:
        failed = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.FAILED, error_code="broker_unavailable", error_message="the job queue is unreachable",
                    finished_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]
        if failed:
            record_job_event(session, job.id, "job.failed")
        session.commit()
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; try again", {"Retry-After": "10"}) from None
    return job, False
