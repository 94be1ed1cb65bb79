"""Cursor pagination: the cursor is the last id of the page (ids are time-ordered)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Query
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

_ID = re.compile(r"^[a-z]{3}_[0-9a-f]{28}$")
DEFAULT_LIMIT, MAX_LIMIT = 20, 100


class PageParams:
    def __init__(
        self,
        after: str | None = Query(
            None, pattern=_ID.pattern, description="cursor: the `next` of the previous page"
        ),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    ) -> None:
        self.after = after
        self.limit = limit


async def page_params(
    after: str | None = Query(None, pattern=_ID.pattern, description="cursor: the `next` of the previous page"),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
) -> PageParams:
    """``Depends(PageParams)`` for async routes: the same query parameters without a threadpool trip."""
    return PageParams(after=after, limit=limit)


def is_valid_id(value: str, prefix: str) -> bool:
    return bool(_ID.match(value)) and value.startswith(prefix + "_")


def keyset_page(session: Session, query: Select[Any], id_column: InstrumentedAttribute[str],
                page: PageParams) -> tuple[list[Any], str | None]:
    """Rows of one page, newest first, and the cursor of the next page (None on the last one)."""
    if page.after:
        query = query.where(id_column < page.after)
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(page.limit + 1)))
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    return rows, rows[-1].id if more else None
