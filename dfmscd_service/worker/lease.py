"""Job leases: the conditional UPDATEs that make the database, not the broker, decide who runs a job.

A message may be delivered twice (late ack + redelivery, an orphan re-sent by a sweep); the
claim succeeds only for a queued job or a job whose previous runner's lease has run out, so a
job never runs twice at the same time and a finished job is never rerun.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session

from dfmscd_service.core.models import Evaluation, Job, JobStatus, JobStudent, utcnow
from dfmscd_service.core.webhooks import record_job_event


def new_lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _expired(now: datetime):  # type: ignore[no-untyped-def]
    return or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)


def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """queued → running, or take over a running/cancelling job whose lease expired.

    The first claim queues the job's ``job.running`` webhooks in the same transaction.
    """
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == JobStatus.QUEUED,
                and_(Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)), _expired(now)),
            ),
        )
        .values(
            status=case((Job.status == JobStatus.QUEUED, JobStatus.RUNNING), else_=Job.status),
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            started_at=case((Job.started_at.is_(None), now), else_=Job.started_at),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    claimed = res.rowcount == 1  # type: ignore[attr-defined]
    if claimed:
        session.execute(
            update(JobStudent)
            .where(JobStudent.job_id == job_id, JobStudent.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING)
            .execution_options(synchronize_session=False)
        )
        first = session.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).one()
        if tuple(first) == (JobStatus.RUNNING, 1):
            record_job_event(session, job_id, "job.running")
    session.commit()
    return claimed


def renew(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Extend our lease; False means another worker owns the job now (stop, write nothing)."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return res.rowcount == 1  # type: ignore[attr-defined]


def still_owner(session: Session, job_id: str, owner: str) -> tuple[bool, str | None, datetime | None]:
    """(do we hold the lease, current status, when a cancel was asked) — one read for the cancellation poll."""
    row = session.execute(
        select(Job.lease_owner, Job.status, Job.cancel_requested_at).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return False, None, None
    return row[0] == owner, row[1], row[2]


def orphaned_job_ids(session: Session, now: datetime) -> list[str]:
    """Running/cancelling jobs whose lease ran out and that were not re-sent since."""
    rows = session.scalars(
        select(Job.id).where(
            Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
            Job.lease_expires_at < now,
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < Job.lease_expires_at),
        )
    )
    return list(rows)


def stale_queued_job_ids(session: Session, older_than: datetime) -> list[str]:
    """Queued jobs whose message was sent long ago (a broker that lost it, a crash before claim)."""
    rows = session.scalars(
        select(Job.id).where(
            Job.status == JobStatus.QUEUED, or_(Job.enqueued_at.is_(None), Job.enqueued_at < older_than)
        )
    )
    return list(rows)


def mark_enqueued(session: Session, job_id: str, now: datetime, condition) -> bool:  # type: ignore[no-untyped-def]
    """Stamp ``enqueued_at`` if ``condition`` still holds (so two sweepers send one message)."""
    res = session.execute(
        update(Job).where(Job.id == job_id, condition).values(enqueued_at=now)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


# --- evaluations: the same rules for the dfmscd.evaluate task ---------------------------------
def _evaluation_expired(now: datetime):  # type: ignore[no-untyped-def]
    return or_(Evaluation.lease_expires_at.is_(None), Evaluation.lease_expires_at < now)


def claim_evaluation(session: Session, evaluation_id: str, owner: str, lease_seconds: float) -> bool:
    """queued → running, or take over a running evaluation whose lease expired."""
    now = utcnow()
    res = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id,
               or_(Evaluation.status == JobStatus.QUEUED,
                   and_(Evaluation.status == JobStatus.RUNNING, _evaluation_expired(now))))
        .values(status=JobStatus.RUNNING, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Evaluation.attempts + 1,
                started_at=case((Evaluation.started_at.is_(None), now), else_=Evaluation.started_at))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return res.rowcount == 1  # type: ignore[attr-defined]


def renew_evaluation(session: Session, evaluation_id: str, owner: str, lease_seconds: float) -> bool:
    res = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.lease_owner == owner, Evaluation.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return res.rowcount == 1  # type: ignore[attr-defined]


def evaluations_to_resend(session: Session, now: datetime, stale_before: datetime) -> list[str]:
    """Running evaluations whose lease ran out and queued ones sent long ago, not re-sent since."""
    rows = session.scalars(
        select(Evaluation.id).where(or_(
            and_(Evaluation.status == JobStatus.RUNNING, Evaluation.lease_expires_at < now,
                 or_(Evaluation.enqueued_at.is_(None), Evaluation.enqueued_at < Evaluation.lease_expires_at)),
            and_(Evaluation.status == JobStatus.QUEUED,
                 or_(Evaluation.enqueued_at.is_(None), Evaluation.enqueued_at < stale_before)),
        ))
    )
    return list(rows)


def mark_evaluation_enqueued(session: Session, evaluation_id: str, now: datetime, stale_before: datetime) -> bool:
    """Stamp ``enqueued_at`` if it still needs sending (so two sweepers send one message)."""
    res = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, or_(
            and_(Evaluation.status == JobStatus.RUNNING, Evaluation.lease_expires_at < now,
                 or_(Evaluation.enqueued_at.is_(None), Evaluation.enqueued_at < Evaluation.lease_expires_at)),
            and_(Evaluation.status == JobStatus.QUEUED,
                 or_(Evaluation.enqueued_at.is_(None), Evaluation.enqueued_at < stale_before))))
        .values(enqueued_at=now)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]
