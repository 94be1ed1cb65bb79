"""The job poll and the job list read with plain column SELECTs, not ORM entities.

Profiled under load, ~90% of a poll's thread time was SQLAlchemy's ORM machinery around two
small rows: the identity map, the ``selectin`` loader of ``Job.students`` (a cache key, an IN
query and a collection per request) and instance bookkeeping. Here the job's columns and its
students' columns come back as Rows (attribute access like the ORM objects), which
``core.job_view.job_out`` turns into the same ``JobOut`` as before; a list fetches all its
students in one query.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from dfmscd_service.api.auth import Principal
from dfmscd_service.api.errors import not_found
from dfmscd_service.api.pagination import PageParams, is_valid_id
from dfmscd_service.api.schemas import JobOut, Page
from dfmscd_service.api.views import job_out
from dfmscd_service.core.models import Job, JobStudent

_JOB_COLUMNS = [getattr(Job, p.key) for p in Job.__mapper__.column_attrs]
_STUDENT_COLUMNS = [getattr(JobStudent, p.key) for p in JobStudent.__mapper__.column_attrs]


class _JobRow:
    """A job's Row plus its students' Rows, read by ``job_out`` as it reads a ``Job``."""

    __slots__ = ("_row", "students")

    def __init__(self, row: Row[Any], students: list[Row[Any]]) -> None:
        self._row = row
        self.students = students

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


def _students(session: Session, job_ids: list[str]) -> dict[str, list[Row[Any]]]:
    by_job: dict[str, list[Row[Any]]] = {j: [] for j in job_ids}
    if job_ids:
        rows = session.execute(select(*_STUDENT_COLUMNS).where(JobStudent.job_id.in_(job_ids))
                               .order_by(JobStudent.job_id, JobStudent.position))
        for r in rows:
            by_job[r.job_id].append(r)
    return by_job


def read_job(session: Session, principal: Principal, job_id: str) -> JobOut:
    """The caller's job (404 for a malformed id, another owner's job or none)."""
    row = session.execute(select(*_JOB_COLUMNS).where(Job.id == job_id)).first() \
        if is_valid_id(job_id, "job") else None
    if row is None or row.owner_id != principal.owner_id:
        raise not_found("job", job_id)
    return job_out(cast(Job, _JobRow(row, _students(session, [job_id])[job_id])))


def read_job_page(session: Session, principal: Principal, page: PageParams, statuses: list[str]) -> Page[JobOut]:
    """One page of the caller's jobs, newest first (the same keyset as ``pagination.keyset_page``)."""
    q = select(*_JOB_COLUMNS).where(Job.owner_id == principal.owner_id)
    if statuses:
        q = q.where(Job.status.in_(statuses))
    if page.after:
        q = q.where(Job.id < page.after)
    rows = list(session.execute(q.order_by(Job.id.desc()).limit(page.limit + 1)))
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    students = _students(session, [r.id for r in rows])
    data = [job_out(cast(Job, _JobRow(r, students[r.id]))) for r in rows]
    return Page[JobOut](data=data, has_more=more, next=rows[-1].id if more else None)
