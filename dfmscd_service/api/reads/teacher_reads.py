"""The teacher list on the job list's pattern (api/reads/job_reads.py): the key check and the page's
ids in one query, then cached bytes. A teacher row is written once and never updated, so its
``created_at`` is its version: an entry is rebuilt only when an id is new to this process (or
was forgotten)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, bindparam, select

from dfmscd_service.api.auth import principal_of
from dfmscd_service.api.http.pagination import PageParams
from dfmscd_service.api.reads.answer_cache import AnswerCache, cached_page
from dfmscd_service.api.views import teacher_out
from dfmscd_service.core.db import run_read
from dfmscd_service.core.models import ApiKey, Teacher

_TEACHER_COLUMNS = [getattr(Teacher, p.key).label(p.key) for p in Teacher.__mapper__.column_attrs]
_TEACHERS_BY_ID = select(*_TEACHER_COLUMNS).where(Teacher.id.in_(bindparam("ids", expanding=True)))


def _page_query(after: bool) -> Any:
    """The key check and the page's ids in one statement (as api/reads/job_reads.py's list)."""
    on = Teacher.owner_id == ApiKey.owner_id
    if after:
        on = on & (Teacher.id < bindparam("after"))
    return (select(ApiKey.id, ApiKey.owner_id, ApiKey.name, ApiKey.revoked_at,
                   Teacher.id.label("item_id"), Teacher.created_at.label("item_version"))
            .select_from(ApiKey).outerjoin(Teacher, on)
            .where(ApiKey.key_hash == bindparam("key_hash"))
            .order_by(Teacher.id.desc()).limit(bindparam("limit")))


_PAGE_QUERIES = {a: _page_query(a) for a in (False, True)}
answers: AnswerCache[bytes] = AnswerCache(16 * 1024 * 1024)


def _build(conn: Connection, ids: list[str]) -> dict[str, tuple[datetime, bytes]]:
    return {r.id: (r.created_at, teacher_out(cast(Teacher, r)).model_dump_json().encode())
            for r in conn.execute(_TEACHERS_BY_ID, {"ids": ids})}


def page_answer(key_hash: str, page: PageParams) -> tuple[str, bytes]:
    """The caller's key id and one page of its teachers, newest first, as ``Page[TeacherOut]`` JSON."""
    params: dict[str, Any] = {"key_hash": key_hash, "limit": page.limit + 1}
    if page.after:
        params["after"] = page.after

    def read(conn: Connection) -> tuple[str, bytes]:
        rows = conn.execute(_PAGE_QUERIES[bool(page.after)], params).all()
        principal = principal_of(rows[0] if rows else None)
        return principal.key_id, cached_page(rows, page.limit, answers, lambda ids: _build(conn, ids))

    return run_read(read)
