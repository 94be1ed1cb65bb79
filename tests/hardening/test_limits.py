"""Per-key limits: request rate (429 + Retry-After), concurrent jobs, storage bytes.

tests/api already checks the first 429 of the job limit and the first 413 of the quota; this
file adds the request-rate limit (Redis counters shared across processes, in-process counters
for the embedded mode, fail-open when Redis is gone), independence between keys, slots and
bytes given back, and the job limit under concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hardening_kit import settings_override
from service_kit import REDIS_URL, assert_error, job_body, make_key, upload_teacher, wait_for
from sqlalchemy import func, select, update

from dfmscd_service.core.db import session_scope
from dfmscd_service.core.models import ApiKey, Job, JobStudent
from dfmscd_service.api.auth import hash_key
from dfmscd_service.api.ratelimit import (
    REDIS_RETRY_SECONDS,
    MemoryCounter,
    RateLimiter,
    RedisCounter,
    lease_block,
    get_limiter,
    limiter_url,
)
from dfmscd_service.core.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _key_id(secret: str) -> str:
    with session_scope() as s:
        return s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(secret)))


def _wait_for_fresh_window(window: int, need: float) -> None:
    """Start a burst at least ``need`` seconds before the fixed window ends (a clock condition)."""
    wait_for(lambda: window - (time.time() % window) >= need, timeout=window + need, interval=0.05,
             what="a fresh rate-limit window")


def _in_one_window(window: int, need: float, attempt: Callable[[], T], tries: int = 10) -> T:
    """``attempt()`` (requests with a fresh key, no assertions) started and finished in one fixed window.

    A burst that a slow machine stretched over a window boundary proves nothing either way, so it
    is run again (a new key each time) in a later window instead of assuming requests are fast;
    the assertions then run on the burst that fitted.
    """
    for _ in range(tries):
        _wait_for_fresh_window(window, need)
        started = int(time.time() // window)
        result = attempt()
        if int(time.time() // window) == started:
            return result
    raise AssertionError(f"{tries} bursts in a row straddled two {window} s windows")


# --------------------------------------------------------------------------- request rate
def test_rate_limit_is_429_with_retry_after_per_key(client):
    limited_paths = [("GET", "/v1/jobs/job_x"), ("POST", "/v1/jobs"), ("GET", "/v1/architectures"),
                     ("POST", "/v1/teachers"), ("DELETE", "/v1/teachers/tch_x")]

    def burst() -> dict[str, Any]:
        secret, bystander = make_key("rate-a"), make_key("rate-b")
        out: dict[str, Any] = {"allowed": [client.get("/v1/jobs", headers=_headers(secret)).status_code for _ in range(4)]}
        out["before"] = time.time()
        out["limited"] = client.get("/v1/teachers", headers=_headers(secret))
        out["after"] = time.time()
        # other keys, health probes and a wrong key are unaffected by this key's limit
        out["bystander"] = client.get("/v1/jobs", headers=_headers(bystander)).status_code
        out["probes"] = [client.get(p, headers=_headers(secret)).status_code for p in ("/healthz", "/readyz")]
        out["wrong_key"] = client.get("/v1/jobs", headers=_headers(secret + "x"))
        # every endpoint of the limited key answers 429, downloads and uploads included
        out["endpoints"] = [client.request(m, p, headers=_headers(secret)) for m, p in limited_paths]
        return out

    with settings_override(RATE_LIMIT_PER_MINUTE="4", RATE_LIMIT_WINDOW_SECONDS="60"):
        got = _in_one_window(60, 15, burst)
    assert got["allowed"] == [200] * 4
    r = got["limited"]
    assert_error(r, 429, "rate_limited", "retry after")
    retry = r.headers["Retry-After"]
    assert retry.isdigit() and 1 <= int(retry) <= 60
    # the seconds left in the window when the request was served (between the two clock readings)
    assert 60 - int(got["after"] % 60) - 1 <= int(retry) <= 60 - int(got["before"] % 60)
    assert r.headers["RateLimit-Limit"] == "4" and r.headers["RateLimit-Remaining"] == "0"
    assert got["bystander"] == 200 and got["probes"] == [200, 200]
    assert_error(got["wrong_key"], 401, "unauthorized")
    for resp in got["endpoints"]:
        assert_error(resp, 429, "rate_limited")


def test_rate_limit_recovers_after_retry_after(client):
    def burst() -> tuple[str, list[int], Any]:
        secret = make_key("rate-recover")
        codes = [client.get("/v1/jobs", headers=_headers(secret)).status_code for _ in range(3)]
        return secret, codes, client.get("/v1/jobs", headers=_headers(secret))

    with settings_override(RATE_LIMIT_PER_MINUTE="60", RATE_LIMIT_WINDOW_SECONDS="2"):  # 2 per 2 s window
        secret, codes, r = _in_one_window(2, 1.2, burst)
        assert codes == [200, 200, 429]
        assert r.status_code == 429 and int(r.headers["Retry-After"]) in (1, 2)
        wait_for(lambda: client.get("/v1/jobs", headers=_headers(secret)).status_code == 200, timeout=60,
                 interval=0.25, what="the next window")


def test_rate_limit_counters_are_shared_across_processes(client, service):
    """Another process (a second API) spends the key's allowance; this process then gets 429."""
    import redis

    assert limiter_url(get_settings()) == REDIS_URL  # the test service runs with a Redis broker
    r = redis.Redis.from_url(REDIS_URL)

    def burst() -> dict[str, Any]:
        secret = make_key("rate-shared")
        key_id = _key_id(secret)
        script = (
            "from dfmscd_service.api.http.errors import ApiError\n"
            "from dfmscd_service.api.ratelimit import enforce_rate_limit\n"
            "codes = []\n"
            "for _ in range(5):\n"
            "    try:\n        enforce_rate_limit(%r); codes.append(200)\n"
            "    except ApiError as e:\n        codes.append(e.status)\n"
            "print(codes)\n" % key_id
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
        here = client.get("/v1/jobs", headers=_headers(secret))
        keys = list(r.scan_iter(match=f"{service['DFMSCD_BROKER_KEY_PREFIX']}ratelimit:{key_id}:*"))
        return {"out": out, "here": here, "counts": [int(r.get(k)) for k in keys], "ttls": [r.ttl(k) for k in keys]}

    # 20 s for the other process's Python start-up; under load it may take longer, and a burst
    # that did not fit in one window is repeated in a later one (see _in_one_window).
    with settings_override(RATE_LIMIT_PER_MINUTE="5", RATE_LIMIT_WINDOW_SECONDS="60"):
        got = _in_one_window(60, 20, burst)
    r.close()
    out = got["out"]
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str([200] * 5)
    assert_error(got["here"], 429, "rate_limited")
    assert got["counts"] == [6] and 0 < got["ttls"][0] <= 61


def test_embedded_mode_counts_in_process(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url=None, rate_limit_redis_url=None)
    assert limiter_url(settings) is None
    limiter = get_limiter(settings)
    assert isinstance(limiter.primary, MemoryCounter)
    t0 = 1_000_040.0  # 20 s into a 60 s window (1_000_020 is a multiple of 60)
    decisions = [limiter.hit(f"k-{tmp_path.name}", 3, 60, now=t0 + i) for i in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[3].retry_after == 37 and decisions[2].remaining == 0
    assert limiter.hit(f"k-{tmp_path.name}", 3, 60, now=t0 + 40).allowed  # next window


class _CountingRedisCounter(RedisCounter):
    """The real counter (a real refused connection), counting how often the limiter tries it."""

    tries = 0

    def incr(self, name: str, ttl_seconds: int, by: int = 1) -> int:
        self.tries += 1
        return super().incr(name, ttl_seconds, by)


def test_unreachable_redis_fails_open_but_still_counts():
    """Redis down: requests are not refused, and the in-process fallback keeps the limit."""
    primary = _CountingRedisCounter("redis://127.0.0.1:1/0", "x:")
    limiter = RateLimiter(primary)
    t0 = 2_000_000.0
    started = time.monotonic()
    decisions = [limiter.hit("down", 2, 60, now=t0) for _ in range(3)]
    elapsed = time.monotonic() - started
    assert [d.allowed for d in decisions] == [True, True, False]
    # One failed connect, then no more tries for REDIS_RETRY_SECONDS: counted, not timed (a
    # machine slow enough to spend that long on three hits may legitimately try again).
    assert 1 <= primary.tries <= 1 + int(elapsed // REDIS_RETRY_SECONDS), (primary.tries, elapsed)


def test_lease_block_is_one_percent_of_the_limit_within_bounds():
    assert [lease_block(n) for n in (1, 5, 199, 200, 1200, 6400, 10**8)] == [1, 1, 1, 2, 12, 64, 64]


def test_two_processes_leasing_tickets_never_exceed_the_limit(service):
    """Two limiters (two API processes) on one real Redis counter, limit 1000 (blocks of 10).

    By hand: A's 995 requests take tickets 1..995 in 100 reservations, holding 996..1000 unused;
    B's 20 requests reserve 1001..1020, all over the limit; A's next 10 use 996..1000 (allowed)
    and then reserve 1021..1030 (refused). So exactly 1000 are allowed, in 103 round trips.
    """
    prefix = f"lease-test-{secrets.token_hex(4)}:"
    a_counter, b_counter = _CountingRedisCounter(REDIS_URL, prefix), _CountingRedisCounter(REDIS_URL, prefix)
    a, b = RateLimiter(a_counter), RateLimiter(b_counter)
    now = 3_000_030.0
    first = [a.hit("k", 1000, 60, now=now).allowed for _ in range(995)]
    middle = [b.hit("k", 1000, 60, now=now).allowed for _ in range(20)]
    last = [a.hit("k", 1000, 60, now=now).allowed for _ in range(10)]
    assert all(first) and not any(middle)
    assert last == [True] * 5 + [False] * 5
    assert (a_counter.tries, b_counter.tries) == (101, 2)
    assert int(a_counter.client.get(f"{prefix}ratelimit:k:{int(now // 60)}")) == 1030
    # a new window starts a new counter and a new lease
    assert a.hit("k", 1000, 60, now=now + 60).allowed and a_counter.tries == 102
    a_counter.client.close()
    b_counter.client.close()


class _HeldRedisCounter(_CountingRedisCounter):
    """The real counter, holding each call until ``go`` is set (``entered`` says it is in one)."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self.entered, self.go = threading.Event(), threading.Event()

    def incr(self, name: str, ttl_seconds: int, by: int = 1) -> int:
        self.entered.set()
        assert self.go.wait(60), "never let go"
        return super().incr(name, ttl_seconds, by)


def test_local_tickets_never_wait_for_redis(service):
    """The event loop's fast reads (api/reads/fast_reads.py) take a ticket only from this process's
    lease: without one they count nothing and get None (the exact path then counts). Half-way
    through a block they have the next one reserved in the background, and go on taking tickets
    while that reservation waits on Redis. In-process counters are always local.

    By hand, limit 1000 (blocks of 10): the exact path reserves 1..10 and takes 1; local calls take
    2..10, the one taking 5 starts the reservation of 11..20 (held inside its Redis call here); the
    next local call finds no ticket; once the reservation is let go, local calls go on with 11."""
    prefix = f"local-ticket-{secrets.token_hex(4)}:"
    counter = _HeldRedisCounter(REDIS_URL, prefix)
    counter.go.set()
    limiter = RateLimiter(counter)
    now = 4_000_020.0
    assert limiter.hit("k", 1000, 60, now=now, local_only=True) is None and counter.tries == 0  # no lease yet
    assert limiter.hit("k", 1000, 60, now=now).remaining == 999 and counter.tries == 1  # tickets 1..10
    counter.go.clear()
    local = [limiter.hit("k", 1000, 60, now=now, local_only=True) for _ in range(9)]
    assert [d.remaining for d in local] == list(range(998, 989, -1))  # tickets 2..10
    assert counter.entered.wait(60)  # the background reservation is inside its Redis call...
    assert limiter.hit("k", 1000, 60, now=now, local_only=True) is None  # ...so none at hand: nothing counted
    assert counter.tries == 1
    counter.go.set()
    eleventh = wait_for(lambda: limiter.hit("k", 1000, 60, now=now, local_only=True), 60, 0.01,
                        what="the reserved block")
    assert eleventh.remaining == 989 and counter.tries == 2
    assert int(counter.client.get(f"{prefix}ratelimit:k:{int(now // 60)}")) == 20
    assert limiter.hit("k", 100, 60, now=now, local_only=True) is None  # blocks of 1: every ticket is a round trip
    counter.client.close()

    in_process = MemoryCounter()
    memory = RateLimiter(in_process, in_process)  # as get_limiter builds it without Redis
    assert [memory.hit("m", 2, 60, now=now, local_only=True).allowed for _ in range(3)] == [True, True, False]


# --------------------------------------------------------------------------- concurrent jobs
def test_job_limit_is_per_key_and_freed_by_cancel(client, teacher_file):
    a, b = _headers(make_key("jobs-a")), _headers(make_key("jobs-b"))
    ta = upload_teacher(client, a, teacher_file).json()["id"]
    tb = upload_teacher(client, b, teacher_file).json()["id"]
    with settings_override(MAX_CONCURRENT_JOBS_PER_KEY="2"):
        first = [client.post("/v1/jobs", headers=a, json=job_body(ta)).json()["id"] for _ in range(2)]
        r = client.post("/v1/jobs", headers=a, json=job_body(ta))
        assert_error(r, 429, "too_many_jobs", "limit per key is 2")
        assert r.headers["Retry-After"].isdigit()
        assert client.post("/v1/jobs", headers=b, json=job_body(tb)).status_code == 202  # B has its own slots
        assert client.post(f"/v1/jobs/{first[0]}/cancel", headers=a).json()["status"] == "cancelled"
        assert client.post("/v1/jobs", headers=a, json=job_body(ta)).status_code == 202  # a slot came back
        with session_scope() as s:  # a finished job frees its slot too
            s.execute(update(Job).where(Job.id == first[1]).values(status="failed"))
        assert client.post("/v1/jobs", headers=a, json=job_body(ta)).status_code == 202
        assert_error(client.post("/v1/jobs", headers=a, json=job_body(ta)), 429, "too_many_jobs")


def test_job_limit_holds_under_concurrent_requests(client, teacher_file):
    """Ten simultaneous creates against a limit of 3: never more than 3 active jobs."""
    from dfmscd_service.api.main import create_app

    secret = make_key("jobs-race")
    h = _headers(secret)
    tid = upload_teacher(client, h, teacher_file).json()["id"]

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            rs = await asyncio.gather(*(ac.post("/v1/jobs", headers=h, json=job_body(tid)) for _ in range(10)))
        return [r.status_code for r in rs]

    with settings_override(MAX_CONCURRENT_JOBS_PER_KEY="3"):
        codes = asyncio.run(burst())
    assert sorted(set(codes)) == [202, 429], codes
    with session_scope() as s:
        owner = s.scalar(select(ApiKey.owner_id).where(ApiKey.key_hash == hash_key(secret)))
        active = s.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner))
    assert codes.count(202) == active <= 3, codes


# --------------------------------------------------------------------------- storage bytes
def test_storage_quota_counts_students_and_is_freed_by_delete(client, teacher_file):
    from dfmscd.io import ModelCard, save_model
    from dfmscd.models import create_model
    from dfmscd_service.core.storage import get_storage

    h, other = _headers(make_key("quota-a")), _headers(make_key("quota-b"))
    size = teacher_file.stat().st_size
    with settings_override(MAX_STORAGE_BYTES_PER_KEY=str(int(size * 2.5))):
        t1 = upload_teacher(client, h, teacher_file).json()
        # a stored student (about one teacher's size here) counts: without it a second teacher would fit
        jid = client.post("/v1/jobs", headers=h, json=job_body(t1["id"])).json()["id"]
        module = create_model("resnet8", num_classes=10, in_channels=1, image_size=8)
        card = ModelCard.model_validate(t1["card"])
        stored = get_storage().write(f"jobs/{jid}/students/resnet8.t0.safetensors", lambda p: save_model(module, card, p))
        assert 2 * size <= size * 2.5 < 2 * size + stored.size_bytes
        with session_scope() as s:
            s.execute(update(JobStudent).where(JobStudent.job_id == jid).values(
                status="succeeded", storage_key=stored.key, sha256=stored.sha256, size_bytes=stored.size_bytes))
            s.execute(update(Job).where(Job.id == jid).values(status="succeeded"))
        err = assert_error(upload_teacher(client, h, teacher_file), 413, "storage_quota_exceeded")
        assert f"({size + stored.size_bytes} used)" in err["message"]
        assert upload_teacher(client, other, teacher_file).status_code == 201  # another key's quota
        assert client.delete(f"/v1/teachers/{t1['id']}", headers=h).status_code == 204
        assert upload_teacher(client, h, teacher_file).status_code == 201  # the deleted bytes came back


def test_storage_quota_holds_under_concurrent_uploads(client, teacher_file):
    """Eight simultaneous uploads against a quota that fits two: exactly two are stored."""
    from dfmscd_service.core.models import Teacher

    secret = make_key("quota-race")
    h = _headers(secret)
    size = teacher_file.stat().st_size
    data = teacher_file.read_bytes()
    card = json.dumps({"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8],
                       "mean": [0.5], "std": [0.25]})

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as ac:
            return await asyncio.gather(*(
                ac.post("/v1/teachers", headers=h, files={"file": ("t.safetensors", data), "card": (None, card)})
                for _ in range(8)
            ))

    with settings_override(MAX_STORAGE_BYTES_PER_KEY=str(int(size * 2.5))):
        rs = asyncio.run(burst())
    codes = [r.status_code for r in rs]
    assert sorted(codes) == [201, 201] + [413] * 6, [(r.status_code, r.text[:120]) for r in rs]
    for r in rs:
        if r.status_code == 413:
            assert r.json()["error"]["code"] == "storage_quota_exceeded"
    stored_dir = get_settings().storage_dir / "teachers"
    accepted = {r.json()["id"] for r in rs if r.status_code == 201}
    with session_scope() as s:
        owner = s.scalar(select(ApiKey.owner_id).where(ApiKey.key_hash == hash_key(secret)))
        rows = set(s.scalars(select(Teacher.id).where(Teacher.owner_id == owner)))
    assert rows == accepted
    # the refused uploads left no file behind: every teacher directory belongs to a row
    with session_scope() as s:
        all_ids = set(s.scalars(select(Teacher.id)))
    assert {p.name for p in stored_dir.iterdir()} <= all_ids
