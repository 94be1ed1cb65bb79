"""Fixtures of the client tests: the service fixtures of tests/api (real PostgreSQL, Redis, data
dir), one live uvicorn server and one real Celery worker for the whole session."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE.parent / "api", HERE.parent / "worker", HERE.parent / "hardening", HERE):
    sys.path.insert(0, str(folder))

from service_kit import (  # noqa: E402,F401  (fixtures)
    auth,
    client,
    other_auth,
    pg_url,
    redis_prefix,
    service,
    teacher,
    teacher_file,
)
from worker_kit import celery_worker, pause_point  # noqa: E402,F401


@pytest.fixture(scope="session")
def api_url(service, client):
    """A real uvicorn on the session's database, broker and data dir (hardening_kit.live_server)."""
    from hardening_kit import live_server

    with live_server() as url:
        yield url


@pytest.fixture(scope="session")
def api_key(service, client) -> str:
    from service_kit import make_key

    return make_key("client-tests")
