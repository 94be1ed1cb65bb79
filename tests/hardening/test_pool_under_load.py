"""The API under more concurrent requests than it has threads and pooled connections.

A live uvicorn (in this process, on a free port) against the test PostgreSQL, with the tightest
legal configuration: 4 threads and a pool of exactly 4 connections with a 3 s checkout timeout.
Before dfmscd_service/api/http/routing.py, a sync route kept its connection while it waited for a thread to
validate its response; 120 concurrent requests then deadlocked until the pool timeout (500s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from hardening_kit import live_server
from service_kit import job_body


@pytest.fixture
def tight_server(client) -> Iterator[str]:
    from dfmscd_service.core.db import get_engine

    with live_server(API_THREADS="4", DB_POOL_SIZE="4", DB_POOL_TIMEOUT_SECONDS="3", RATE_LIMIT_PER_MINUTE="0") as url:
        engine = get_engine()
        assert engine.pool.size() + engine.pool._max_overflow == 4  # type: ignore[attr-defined]
        yield url


def test_more_requests_than_threads_and_connections_all_succeed(client, auth, teacher, tight_server):
    from dfmscd_service.core.db import get_engine

    h = auth
    job_id = httpx.post(tight_server + "/v1/jobs", headers=h, json=job_body(teacher["id"]), timeout=30).json()["id"]  # stays queued: no worker
    paths = [f"/v1/jobs/{job_id}", "/v1/jobs?limit=20", "/v1/teachers?limit=20", f"/v1/jobs/{job_id}/events"]

    async def burst() -> list[int | str]:
        async with httpx.AsyncClient(base_url=tight_server, headers=h, timeout=60,
                                     limits=httpx.Limits(max_connections=200)) as ac:
            async def one(i: int) -> int | str:
                try:
                    return (await ac.get(paths[i % len(paths)])).status_code
                except httpx.HTTPError as exc:
                    return type(exc).__name__
            return await asyncio.gather(*(one(i) for i in range(120)))

    results = asyncio.run(burst())
    assert results == [200] * 120, {r: results.count(r) for r in set(results)}
    assert get_engine().pool.checkedout() == 0  # every connection went back
