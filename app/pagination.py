"""Cursor pagination: the cursor is the last id of the page (ids are time-ordered)."""

from __future__ import annotations

import re

from fastapi import Query

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


def is_valid_id(value: str, prefix: str) -> bool:
    return bool(_ID.match(value)) and value.startswith(prefix + "_")
