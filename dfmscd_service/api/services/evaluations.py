"""Evaluating a finished job on an evaluation set, on request: the rules behind
``POST /v1/jobs/{id}/evaluations``, and a job's deletion.

The set is checked against the job's card here (in the torch pool: 422 naming the expected shape or
the labels out of range), then the work goes to the worker as a ``dfmscd.evaluate`` message that
carries the evaluation's id (``core.broker``), like a job: the teacher and every stored file of
every student are run there, never in the web process. The row is committed before the message is
sent; a broker that refuses it leaves the evaluation failed, never queued for ever.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dfmscd_service.api.auth import Principal
from dfmscd_service.api.deps import get_owned_evaluation_set
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.services.evaluation_sets import check_fits
from dfmscd_service.core.broker import BrokerUnavailable, enqueue_evaluation
from dfmscd_service.core.models import (
    ACTIVE_STATUSES,
    Evaluation,
    Job,
    JobStatus,
    Teacher,
    new_id,
    utcnow,
)
from dfmscd_service.core.storage import get_storage
from dfmscd_service.core.storage_base import StorageUnavailable, job_prefix

log = logging.getLogger("dfmscd.api")


def job_card(session: Session, job: Job) -> dict[str, Any] | None:
    """The card the job's data follows: its teacher's, else (the teacher deleted) a student's."""
    if job.teacher_id:
        card = session.scalar(select(Teacher.card).where(Teacher.id == job.teacher_id))
        if card is not None:
            return dict(card)
    return next((dict(s.card) for s in job.students if s.card), None)


def request_evaluation(session: Session, principal: Principal, job: Job, set_id: str) -> Evaluation:
    """Queue the evaluation of a finished job with stored students on one of the caller's sets."""
    evaluation_set = get_owned_evaluation_set(session, principal, set_id)  # 404 for another owner's
    if job.status in ACTIVE_STATUSES:
        raise ApiError(409, "not_ready", f"job {job.id!r} is {job.status}; evaluate it once it has ended")
    if not any(s.storage_key for s in job.students):
        raise ApiError(409, "not_ready", f"job {job.id!r} {job.status} without stored students; there is nothing "
                       "to evaluate")
    card = job_card(session, job)
    assert card is not None  # stored students carry their card
    check_fits(session, evaluation_set, card)
    now = utcnow()
    evaluation = Evaluation(id=new_id("evl"), owner_id=principal.owner_id, job_id=job.id,
                            evaluation_set_id=evaluation_set.id, source="request", status=JobStatus.QUEUED,
                            attempts=0, enqueued_at=now, created_at=now)
    session.add(evaluation)
    session.commit()
    try:
        enqueue_evaluation(evaluation.id)
    except BrokerUnavailable:
        session.execute(update(Evaluation).where(Evaluation.id == evaluation.id, Evaluation.status == JobStatus.QUEUED)
                        .values(status=JobStatus.FAILED, error_code="broker_unavailable",
                                error_message="the job queue is unreachable", finished_at=utcnow()))
        session.commit()
        raise ApiError(503, "broker_unavailable", "the job queue is unreachable; try again", {"Retry-After": "10"}) from None
    return evaluation


def delete_job(session: Session, job: Job) -> None:
    """Delete a finished job: its rows (students and their files, events, evaluations) and everything
    it stored (weights, every exported file, samples, calibration sample); 409 while it is active."""
    if job.status in ACTIVE_STATUSES:
        raise ApiError(409, "job_active", f"job {job.id!r} is {job.status}; cancel it first, then delete it")
    job_id = job.id
    session.delete(job)
    session.commit()
    try:
        get_storage().delete_prefix(job_prefix(job_id))
    except StorageUnavailable:  # the rows are gone, so is the job; its files are unreferenced debris
        log.warning("job %s deleted; its files stay in the unreachable bucket", job_id)
