"""The job poll and the job list: one query checks the key and reads the versions, then cached bytes.

Profiled under load, a poll's cost was SQLAlchemy's ORM machinery around two small rows and the
building of the same answer again and again. Now a poll is one Core query, prebuilt once (its
compiled form cached), that checks the key and reads the job's owner and ``updated_at``; the
answer comes from ``answer_cache`` when it was built from that version of the job, and is built
(job columns and student columns as plain Rows, ``core.job_view.job_out``, pydantic's JSON) only
when the job changed. The list reads its page's ids and versions and builds only the changed
entries. The key is still looked up on every request, so revocation is immediate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, bindparam, select

from dfmscd_service.api.auth import _KEY_BY_HASH, principal_of
from dfmscd_service.api.http.errors import not_found
from dfmscd_service.api.http.pagination import PageParams, is_valid_id
from dfmscd_service.api.reads.answer_cache import AnswerCache, cached_answers, cached_page
from dfmscd_service.api.views import job_out
from dfmscd_service.core.db import run_read
from dfmscd_service.core.models import ApiKey, Job, JobStudent

# Labelled with the attribute names (``job_metadata``, not the column's ``metadata``): job_out reads those.
_JOB_COLUMNS = [getattr(Job, p.key).label(p.key) for p in Job.__mapper__.column_attrs]
# Not the student report (kilobytes per student, served by its own route, never in the job's JSON).
_STUDENT_COLUMNS = [getattr(JobStudent, p.key).label(p.key) for p in JobStudent.__mapper__.column_attrs
                    if p.key != "report"]

_KEY_AND_VERSION = (
    select(ApiKey.id, ApiKey.owner_id, ApiKey.name, ApiKey.revoked_at,
           Job.owner_id.label("job_owner"), Job.updated_at.label("job_version"))
    .select_from(ApiKey)
    .outerjoin(Job, Job.id == bindparam("job_id"))
    .where(ApiKey.key_hash == bindparam("key_hash"))
)
_JOBS_BY_ID = select(*_JOB_COLUMNS).where(Job.id.in_(bindparam("ids", expanding=True)))
_STUDENTS_OF = (select(*_STUDENT_COLUMNS).where(JobStudent.job_id.in_(bindparam("ids", expanding=True)))
                .order_by(JobStudent.job_id, JobStudent.position))


def _page_query(by_status: bool, after: bool) -> Any:
    """The key check and the page's ids and versions in one statement: the key's row comes back
    once per job of the page (or once, with NULL job columns, for an empty page)."""
    on = Job.owner_id == ApiKey.owner_id
    if by_status:
        on = on & Job.status.in_(bindparam("statuses", expanding=True))
    if after:
        on = on & (Job.id < bindparam("after"))
    return (select(ApiKey.id, ApiKey.owner_id, ApiKey.name, ApiKey.revoked_at,
                   Job.id.label("item_id"), Job.updated_at.label("item_version"))
            .select_from(ApiKey).outerjoin(Job, on)
            .where(ApiKey.key_hash == bindparam("key_hash"))
            .order_by(Job.id.desc()).limit(bindparam("limit")))


_PAGE_QUERIES = {(s, a): _page_query(s, a) for s in (False, True) for a in (False, True)}

answers: AnswerCache[bytes] = AnswerCache()  # this process's cache (api/reads/answer_cache.py)


class _JobRow:
    """A job's Row plus its students' Rows, read by ``job_out`` as it reads a ``Job``."""

    __slots__ = ("_row", "students")

    def __init__(self, row: Row[Any], students: list[Row[Any]]) -> None:
        self._row = row
        self.students = students

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


def _build(conn: Connection, ids: list[str]) -> dict[str, tuple[datetime, bytes]]:
    """Answers read from the database now, with the version each was built from.

    The job rows first, then their students: a write landing between the two reads leaves an
    answer cached under the *older* version, which the next request finds stale and rebuilds
    (the other order could cache old students under the new version, with autocommit reads)."""
    jobs = conn.execute(_JOBS_BY_ID, {"ids": ids}).all()
    students: dict[str, list[Row[Any]]] = {j: [] for j in ids}
    for r in conn.execute(_STUDENTS_OF, {"ids": ids}):
        students[r.job_id].append(r)
    return {row.id: (row.updated_at, job_out(cast(Job, _JobRow(row, students[row.id]))).model_dump_json().encode())
            for row in jobs}


def poll_answer(key_hash: str, job_id: str) -> tuple[str, bytes]:
    """The caller's key id and job as JSON (401/429 as ``auth.authenticate``; 404 for a malformed
    id, another owner's job or none). ``key_hash``: ``auth.credentials_hash`` of the header."""

    def read(conn: Connection) -> tuple[str, bytes | None]:
        if not is_valid_id(job_id, "job"):  # cannot name a row (a NUL would upset PostgreSQL): key, then 404
            principal_of(conn.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first())
            return "", None
        row = conn.execute(_KEY_AND_VERSION, {"key_hash": key_hash, "job_id": job_id}).first()
        principal = principal_of(row)
        assert row is not None
        if row.job_owner != principal.owner_id:
            return "", None
        return principal.key_id, cached_answers(answers, {job_id: row.job_version}, lambda ids: _build(conn, ids)).get(job_id)

    key_id, body = run_read(read)
    if body is None:
        raise not_found("job", job_id)
    return key_id, body


def page_answer(key_hash: str, page: PageParams, statuses: list[str]) -> tuple[str, bytes]:
    """The caller's key id and one page of its jobs, newest first, as ``Page[JobOut]`` JSON (the
    keyset of ``pagination.keyset_page``: ``after`` is the last id of the previous page)."""
    params: dict[str, Any] = {"key_hash": key_hash, "limit": page.limit + 1}
    if statuses:
        params["statuses"] = statuses
    if page.after:
        params["after"] = page.after

    def read(conn: Connection) -> tuple[str, bytes]:
        rows = conn.execute(_PAGE_QUERIES[(bool(statuses), bool(page.after))], params).all()
        principal = principal_of(rows[0] if rows else None)
        return principal.key_id, cached_page(rows, page.limit, answers, lambda ids: _build(conn, ids))

    return run_read(read)
