"""Fast reads (api/reads/fast_reads.py): unchanged polls and list pages answered on the event loop,
checked by the change epoch (api/reads/change_epoch.py), never stale past what the epoch can see.

Real components only: a SQLite file and the test PostgreSQL (with migration 0004's triggers),
apps started through their lifespan by ``TestClient`` (whose event loop runs in a thread of its
own, so the listener follows notifications while a test waits). Changes "from another process"
are made through an engine of the test's own, outside any ORM session, so that only the epoch
source can notice them (this process's session commits bump the epoch themselves). PostgreSQL
notifications are awaited on the epoch's condition, with a timeout that only bounds a broken run.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from service_kit import PG_ADMIN_URL, REDIS_URL, new_pg_database, require_service
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dfmscd_service.api.auth import create_api_key
from dfmscd_service.api.reads.change_epoch import CHANNEL, PgNotifyListener, SqliteDataVersion, epoch_source
from dfmscd_service.api.reads.fast_reads import FastReads
from dfmscd_service.core import models as M
from dfmscd_service.core.db import dispose_engines, session_scope
from dfmscd_service.core.migrate import upgrade_head
from dfmscd_service.core.settings import get_settings

WAIT = 60.0  # bounds a broken run only: a notification normally arrives within milliseconds


# --------------------------------------------------------------------------- apps and rows
@contextmanager
def app_on(tmp_path: Path, database_url: str, broker_url: str, **env: str) -> Iterator[Any]:
    """A TestClient on its own app with these settings (restored afterwards)."""
    from fastapi.testclient import TestClient

    from dfmscd_service.api.main import create_app

    settings = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url, "BROKER_URL": broker_url,
                "API_TORCH_WARM": "0", "RATE_LIMIT_PER_MINUTE": "100000", **env}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in settings.items():
            mp.setenv(f"DFMSCD_{name}", value)
        get_settings.cache_clear()
        try:
            with TestClient(create_app(), raise_server_exceptions=False) as client:
                yield client
        finally:
            dispose_engines()
    get_settings.cache_clear()


@contextmanager
def embedded_app(tmp_path: Path, **env: str) -> Iterator[Any]:
    """The embedded set-up: a SQLite file and the server-less broker beside it."""
    with app_on(tmp_path, f"sqlite:///{tmp_path / 'api.sqlite'}", f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
                **env) as client:
        yield client


@contextmanager
def postgresql_app(tmp_path: Path, redis_prefix: str, **env: str) -> Iterator[Any]:
    """The PostgreSQL + Redis set-up, on a database of its own (the listener test refuses it
    connections for a while); returns once the listener is listening."""
    require_service("PostgreSQL", lambda: create_engine(PG_ADMIN_URL).connect().close())
    url, drop = new_pg_database("fast")
    try:
        with app_on(tmp_path, url, REDIS_URL, BROKER_KEY_PREFIX=redis_prefix, **env) as client:
            listener = epoch_of(client)
            assert isinstance(listener, PgNotifyListener)
            assert listener.wait_until(lambda: listener.listening, WAIT), "the listener never connected"
            yield client
    finally:
        drop()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Any]:
    with embedded_app(tmp_path) as client:
        yield client


@pytest.fixture
def postgresql(tmp_path: Path, redis_prefix: str) -> Iterator[Any]:
    with postgresql_app(tmp_path, redis_prefix) as client:
        yield client


@pytest.fixture(params=["embedded", "postgresql"])
def any_setup(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def epoch_of(client: Any) -> Any:
    return client.app.state.fast_reads.epoch


def reads_of(client: Any) -> FastReads:
    return client.app.state.fast_reads


REPORT = {"timings": {"total_s": 1.5}, "students": {"resnet8": {"params": 1000}}}


def make_tenant(jobs: int = 2) -> tuple[dict[str, str], str, list[str]]:
    """A key, a teacher and finished jobs, inserted as the API and the worker would."""
    with session_scope() as s:
        key, secret = create_api_key(s, "fast-reads")
        teacher = M.Teacher(id=M.new_id("tch"), owner_id=key.owner_id, sha256="0" * 64, size_bytes=1,
                            file_format="safetensors", storage_key="x", filename="t.safetensors",
                            card={"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8],
                                  "mean": [0.5], "std": [0.25]})
        s.add(teacher)
        s.flush()
        ids = []
        for _ in range(jobs):
            job = M.Job(id=M.new_id("job"), owner_id=key.owner_id, teacher_id=teacher.id, status="succeeded",
                        preset="fast", config={"epochs": 2}, budget={"epochs": 2}, seed=0, job_metadata={},
                        progress=1.0, epoch=2, attempts=1, report=REPORT, enqueued_at=M.utcnow())
            job.students = [M.JobStudent(position=0, name="resnet8", architecture="resnet8", arch_kwargs={},
                                         status="succeeded", parameters=1000, metrics={"loss": 0.5}, exports={})]
            s.add(job)
            ids.append(job.id)
    return {"Authorization": f"Bearer {secret}"}, teacher.id, ids


@contextmanager
def another_process() -> Iterator[Any]:
    """A connection of the test's own to the app's database, outside any ORM session: its
    commits reach the app only the way a worker's or another API's would."""
    engine = create_engine(get_settings().resolved_database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def settle(client: Any) -> None:
    """On PostgreSQL, return once the notifications of every transaction committed so far have
    reached the app: a marker sent now arrives after them (commit order). SQLite needs nothing:
    ``data_version`` is read by every request."""
    listener = epoch_of(client)
    if not isinstance(listener, PgNotifyListener):
        return
    token = secrets.token_hex(8)
    with another_process() as conn:
        conn.execute(text("SELECT pg_notify(:c, :t)"), {"c": CHANNEL, "t": token})
        conn.commit()
    assert listener.wait_until(lambda: listener.last_payload == token, WAIT), "the marker never arrived"


def seen(client: Any, commit: Any) -> None:
    """Run ``commit()`` (one transaction, from another connection) and return once the app can
    have seen it; on PostgreSQL, check that it was notified: its notification and the marker's."""
    listener = epoch_of(client)
    before = getattr(listener, "notifications", 0)
    commit()
    settle(client)
    if isinstance(listener, PgNotifyListener):
        assert listener.notifications == before + 2, "the commit sent no notification"


def get(client: Any, path: str, headers: dict[str, str], expect: int = 200, **params: Any) -> Any:
    r = client.get(path, headers=headers, params=params)
    assert r.status_code == expect, r.text
    return r


# --------------------------------------------------------------------------- epoch sources
def test_sqlite_data_version_moves_when_another_connection_commits(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x INTEGER)")
    epoch = SqliteDataVersion(str(path))
    first = epoch.current()
    assert first is not None and epoch.current() == first  # nothing committed: unchanged
    other.execute("INSERT INTO t VALUES (1)")
    second = epoch.current()
    assert second != first and epoch.current() == second
    other.execute("BEGIN")
    other.execute("INSERT INTO t VALUES (2)")
    assert epoch.current() == second  # not committed yet
    other.execute("ROLLBACK")
    assert epoch.current() == second
    epoch.bump()  # this process's own commit
    assert epoch.current() not in (first, second)
    asyncio.run(epoch.stop())
    assert epoch.current() is None
    other.close()


def test_the_source_follows_the_database_url(tmp_path: Path) -> None:
    assert isinstance(epoch_source(f"sqlite:///{tmp_path / 'x.sqlite'}"), SqliteDataVersion)
    assert epoch_source("sqlite://") is None and epoch_source("sqlite:///:memory:") is None
    pg = epoch_source("postgresql+psycopg://u:p@db.example:5433/dfmscd?sslmode=require")
    assert isinstance(pg, PgNotifyListener) and pg.conninfo == "postgresql://u:p@db.example:5433/dfmscd?sslmode=require"
    assert pg.current() is None  # not listening yet: the fast path is off


@contextmanager
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_a_commit_on_each_watched_table_notifies_the_listener() -> None:
    require_service("PostgreSQL", lambda: create_engine(PG_ADMIN_URL).connect().close())
    url, drop = new_pg_database("notify")
    try:
        upgrade_head(url)
        listener = epoch_source(url)
        assert isinstance(listener, PgNotifyListener)
        with loop_in_thread() as loop:
            asyncio.run_coroutine_threadsafe(listener.start(), loop).result(WAIT)
            try:
                assert listener.wait_until(lambda: listener.listening, WAIT)
                engine = create_engine(url, poolclass=NullPool)
                for table in ("api_keys", "jobs", "job_students", "teachers"):
                    before, epoch = listener.notifications, listener.current()
                    with engine.begin() as conn:  # a statement that changes no row still notifies
                        conn.execute(text(f"UPDATE {table} SET id = id WHERE false"))
                    assert listener.wait_until(lambda: listener.notifications > before, WAIT), table
                    assert listener.current() != epoch
                # an unwatched table does not (the next watched commit's notification is the only one)
                before = listener.notifications
                with engine.begin() as conn:
                    conn.execute(text("UPDATE job_events SET id = id WHERE false"))
                    conn.execute(text(f"NOTIFY {CHANNEL}_other"))
                with engine.begin() as conn:
                    conn.execute(text("DELETE FROM teachers WHERE false"))
                assert listener.wait_until(lambda: listener.notifications > before, WAIT)
                assert listener.notifications == before + 1
                engine.dispose()
            finally:
                asyncio.run_coroutine_threadsafe(listener.stop(), loop).result(WAIT)
        assert listener.current() is None and not listener.listening
    finally:
        drop()


# --------------------------------------------------------------------------- through the HTTP API
def test_unchanged_answers_come_from_the_event_loop_byte_for_byte(any_setup) -> None:
    client, reads = any_setup, reads_of(any_setup)
    auth, _, (job_id, _) = make_tenant()
    settle(client)
    paths = [(f"/v1/jobs/{job_id}", {}), ("/v1/jobs", {"limit": 1}), ("/v1/jobs", {"status": "succeeded"}),
             ("/v1/teachers", {})]
    first = [get(client, p, auth, **q) for p, q in paths]
    hits, exact = reads.hits, reads.exact
    again = [get(client, p, auth, **q) for p, q in paths]
    assert (reads.hits, reads.exact) == (hits + len(paths), exact)  # all four from the front cache
    for a, b in zip(first, again):
        assert b.content == a.content and b.headers["content-type"] == a.headers["content-type"] == "application/json"


def test_simultaneous_first_reads_share_one_exact_read(any_setup) -> None:
    """20 requests for the same page at once, nothing cached: one exact-path run (a query on a
    read thread), the other 19 wait for it, and all get the same bytes."""
    import httpx

    client, reads = any_setup, reads_of(any_setup)
    auth, _, _ = make_tenant()
    settle(client)

    async def burst() -> list[Any]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as ac:
            return await asyncio.gather(*(ac.get("/v1/jobs", params={"limit": 7}) for _ in range(20)))

    exact, shared = reads.exact, reads.shared
    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 20
    assert len({r.content for r in answers}) == 1
    assert (reads.exact, reads.shared) == (exact + 1, shared + 19)


def test_a_change_from_another_connection_is_served_at_once(any_setup) -> None:
    client, reads = any_setup, reads_of(any_setup)
    auth, _, (job_id, other_id) = make_tenant()
    settle(client)
    get(client, f"/v1/jobs/{job_id}", auth)
    get(client, "/v1/jobs", auth)
    with another_process() as conn:
        def worker_write() -> None:  # as the worker's recorder: the row and its version
            conn.execute(update(M.Job).where(M.Job.id == job_id).values(progress=0.5, status="running",
                                                                       updated_at=M.utcnow()))
            conn.execute(update(M.JobStudent).where(M.JobStudent.job_id == job_id).values(metrics={"loss": 0.25}))
            conn.commit()
        seen(client, worker_write)
    exact = reads.exact
    polled = get(client, f"/v1/jobs/{job_id}", auth).json()
    assert polled["progress"] == 0.5 and polled["status"] == "running"
    assert polled["students"][0]["metrics"] == {"loss": 0.25}
    listed = {j["id"]: j for j in get(client, "/v1/jobs", auth).json()["data"]}
    assert listed[job_id] == polled and listed[other_id]["progress"] == 1.0
    assert reads.exact == exact + 2  # rebuilt by the exact path...
    hits = reads.hits
    assert get(client, f"/v1/jobs/{job_id}", auth).json() == polled
    assert reads.hits == hits + 1  # ...and then served from the front cache again


def test_a_key_revoked_elsewhere_is_refused_on_the_next_read(any_setup) -> None:
    client = any_setup
    auth, _, (job_id, _) = make_tenant()
    settle(client)
    for _ in range(2):  # cached, then served from the front cache
        get(client, f"/v1/jobs/{job_id}", auth)
        get(client, "/v1/teachers", auth)
    hits = reads_of(client).hits
    assert hits >= 2
    with another_process() as conn:
        def revoke() -> None:  # as `dfmscd keys revoke` in another process
            conn.execute(update(M.ApiKey).where(M.ApiKey.key_hash == _hash(auth)).values(revoked_at=M.utcnow()))
            conn.commit()
        seen(client, revoke)
    for path in (f"/v1/jobs/{job_id}", "/v1/jobs", "/v1/teachers"):
        r = get(client, path, auth, expect=401)
        assert r.json()["error"]["message"] == "API key has been revoked"
    assert reads_of(client).hits == hits


def test_this_process_sees_its_own_writes_at_once(any_setup) -> None:
    client, reads = any_setup, reads_of(any_setup)
    auth, teacher_id, (job_id, _) = make_tenant()
    with session_scope() as s:  # queued again, so that it can be cancelled
        s.execute(update(M.Job).where(M.Job.id == job_id).values(status="queued", progress=0.0))
    settle(client)
    for _ in range(2):
        assert get(client, f"/v1/jobs/{job_id}", auth).json()["status"] == "queued"
        assert [t["id"] for t in get(client, "/v1/teachers", auth).json()["data"]] == [teacher_id]
    hits, epoch = reads.hits, epoch_of(client)
    before = epoch.value
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).json()["status"] == "cancelled"
    # bumped by the commit itself (the session hook), before the answer went out: on SQLite
    # nothing else moves this number, on PostgreSQL the notification may still be on its way
    assert epoch.value > before
    assert get(client, f"/v1/jobs/{job_id}", auth).json()["status"] == "cancelled"
    before = epoch.value
    assert client.delete(f"/v1/teachers/{teacher_id}", headers=auth).status_code == 204
    assert epoch.value > before
    assert get(client, "/v1/teachers", auth).json()["data"] == []
    assert get(client, f"/v1/jobs/{job_id}", auth).json()["teacher_id"] is None
    assert reads.hits == hits  # each of those was rebuilt, none served from before the write


def test_refusals_are_never_cached(any_setup) -> None:
    client, reads = any_setup, reads_of(any_setup)
    auth, _, (job_id, _) = make_tenant()
    other, _, _ = make_tenant(jobs=0)
    exact, hits = reads.exact, reads.hits
    for _ in range(3):
        get(client, f"/v1/jobs/{job_id}", other, expect=404)
        get(client, "/v1/jobs/job_nonsense", auth, expect=404)
        get(client, f"/v1/jobs/{job_id}", {"Authorization": "Bearer dfk_wrong"}, expect=401)
    assert reads.hits == hits and reads.exact == exact + 9
    assert get(client, f"/v1/jobs/{job_id}", {}, expect=401).json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("setup", ["embedded", "postgresql"])
def test_the_rate_limit_holds_on_the_fast_path(setup: str, tmp_path: Path, redis_prefix: str) -> None:
    """5 requests per 300 s window, served from the front cache after the first, then 429 from
    it too. Embedded: in-process counters, a ticket on the loop. PostgreSQL + Redis: a limit this
    small takes blocks of one ticket, so every ticket is a round trip, counted on a read thread
    (still no query: the exact path runs once)."""
    limit = {"RATE_LIMIT_PER_MINUTE": "1", "RATE_LIMIT_WINDOW_SECONDS": "300"}
    with (embedded_app(tmp_path, **limit) if setup == "embedded"
          else postgresql_app(tmp_path, redis_prefix, **limit)) as client:
        reads = reads_of(client)
        for _ in range(10):  # a burst that straddled two windows proves nothing: again, with a new key
            window = int(time.time() // 300)
            auth, _, (job_id, _) = make_tenant()
            settle(client)
            hits, exact = reads.hits, reads.exact
            codes = [client.get(f"/v1/jobs/{job_id}", headers=auth) for _ in range(7)]
            if int(time.time() // 300) == window:
                break
        assert [r.status_code for r in codes] == [200] * 5 + [429] * 2
        assert (reads.hits, reads.exact) == (hits + 4, exact + 1)
        limited = codes[-1]
        assert limited.json()["error"]["code"] == "rate_limited" and limited.headers["RateLimit-Limit"] == "5"
        assert limited.headers["Retry-After"].isdigit()
        assert codes[1].content == codes[0].content


def test_the_switch_turns_the_fast_path_off(tmp_path: Path) -> None:
    with embedded_app(tmp_path, API_FAST_READS="false") as client:
        auth, _, (job_id, _) = make_tenant()
        bodies = {get(client, f"/v1/jobs/{job_id}", auth).content for _ in range(3)}
        assert len(bodies) == 1 and reads_of(client).epoch is None
        assert (reads_of(client).hits, reads_of(client).exact) == (0, 3)


def test_a_killed_listener_turns_the_fast_path_off_until_it_reconnects(postgresql) -> None:
    client, reads = postgresql, reads_of(postgresql)
    listener = epoch_of(client)
    auth, _, (job_id, _) = make_tenant()
    settle(client)
    get(client, f"/v1/jobs/{job_id}", auth)  # also leaves the read engine one open connection
    get(client, f"/v1/jobs/{job_id}", auth)
    assert reads.hits >= 1
    old_pid = listener.backend_pid
    database = make_url(get_settings().resolved_database_url).database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with another_process() as conn, admin.connect() as pg:
        try:
            # PostgreSQL refuses new connections to the database, so the listener cannot come back
            pg.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            assert pg.execute(text("SELECT pg_terminate_backend(:p)"), {"p": old_pid}).scalar() is True
            assert listener.wait_until(lambda: not listener.listening, WAIT)
            assert listener.current() is None
            # a commit nobody is told about: the answers stay exact all the same
            conn.execute(update(M.Job).where(M.Job.id == job_id).values(progress=0.75, updated_at=M.utcnow()))
            conn.commit()
            hits, exact = reads.hits, reads.exact
            for _ in range(2):
                assert get(client, f"/v1/jobs/{job_id}", auth).json()["progress"] == 0.75
            assert (reads.hits, reads.exact) == (hits, exact + 2)
        finally:
            pg.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        assert listener.wait_until(lambda: listener.listening, WAIT), "the listener did not reconnect"
    admin.dispose()
    assert listener.backend_pid != old_pid
    hits = reads.hits
    for _ in range(2):  # built again (the reconnection moved the epoch), then from the front cache
        assert get(client, f"/v1/jobs/{job_id}", auth).json()["progress"] == 0.75
    assert reads.hits == hits + 1


def _hash(auth: dict[str, str]) -> str:
    from dfmscd_service.api.auth import hash_key

    return hash_key(auth["Authorization"].removeprefix("Bearer "))


# --------------------------------------------------------------------------- the event loop
def test_every_shipped_api_command_runs_on_asyncios_loop(caplog: pytest.LogCaptureFixture) -> None:
    """uvloop accepts one new connection per loop iteration; with the fast reads keeping the loop
    busy, connections waited seconds to be accepted (api/main.py, EVENT_LOOP)."""
    import uvloop
    import yaml

    from dfmscd_service.api.main import EVENT_LOOP, _warn_if_uvloop

    root = Path(__file__).resolve().parents[2]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]["api"]["command"]
    cmd = json.loads((root / "Dockerfile").read_text().split("\nCMD ", 1)[1].splitlines()[0])
    for command in (compose, cmd):
        assert command[0] == "uvicorn" and command[command.index("--loop") + 1] == EVENT_LOOP == "asyncio"
    # ... and a plain `uvicorn` (--loop auto) picks asyncio too: the service extra installs no uvloop
    service_extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["service"]
    assert not [d for d in service_extra if d.startswith("uvloop")]

    async def warn() -> None:
        _warn_if_uvloop()

    with caplog.at_level("WARNING", logger="dfmscd.api"):
        asyncio.run(warn())
        assert not caplog.records
        uvloop.run(warn())
    assert [r.getMessage() for r in caplog.records][0].startswith("running on uvloop")
