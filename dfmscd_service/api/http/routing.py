"""Routes that hand their database connection back as soon as the endpoint returns.

FastAPI closes a ``Depends(get_session)`` session only after it has validated the response, and
for a sync route that validation is a second trip through the threadpool. A request would hold
its pooled connection while it waits for a thread; with enough clients every thread waits for a
connection held by a request that waits for a thread, and only the pool timeout breaks the
deadlock (measured: 400 of 404 requests timed out with 200 clients). Routes return Pydantic
models, never ORM rows, so closing the session when the function returns loses nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from sqlalchemy.orm import Session


def release_sessions(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a sync endpoint so that every Session it was given is closed on its own thread."""

    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        finally:
            for value in kwargs.values():
                if isinstance(value, Session):
                    value.close()

    return run


class SessionReleasingRoute(APIRoute):
    """``APIRouter(route_class=SessionReleasingRoute)``: sync endpoints release their session."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = release_sessions(endpoint)
        super().__init__(path, endpoint, **kwargs)
