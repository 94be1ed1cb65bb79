"""Read endpoints answered in one threadpool trip: key check, query and JSON serialisation together.

A plain sync route with ``Depends(require_key)`` and ``Depends(get_session)`` makes four trips
through AnyIO's threadpool per request (the key, the session, the route, FastAPI's re-validation
of the returned model), opens two database sessions, and serialises the answer twice; under 200
connections a status poll cost ~6 ms beyond the framework (docs/reliability.md, "A lean API").
Here an ``async`` route hands one function to one thread: a session, the key check
(``auth.authenticate``: same 401/429 answers, still one lookup per request so revocation is
immediate), the route's query, and ``model_dump_json`` (pydantic's Rust serialiser, once).
The session is closed before the thread returns, so no connection is held while a request
waits for a thread (the deadlock ``routing.py`` describes cannot occur).
"""

from __future__ import annotations

from typing import Callable

from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dfmscd_service.api.auth import Principal, authenticate
from dfmscd_service.core.db import session_factory

Read = Callable[[Session, Principal], BaseModel]


def _run(credentials: HTTPAuthorizationCredentials | None, read: Read) -> bytes:
    with session_factory()() as session:
        principal = authenticate(session, credentials)
        model = read(session, principal)
    return model.model_dump_json().encode()


async def answer(credentials: HTTPAuthorizationCredentials | None, read: Read) -> Response:
    """``read(session, principal)``'s model as a JSON response (ApiErrors answer as usual)."""
    return Response(await run_in_threadpool(_run, credentials, read), media_type="application/json")
