"""The poll and the list pages answer from cached bytes (api/reads/answer_cache.py): never a stale job.

Each test fills the cache with a read, changes the job the way another process does (the
worker's recorder and outcome writes, a teacher's deletion), and reads again. The answers are
also compared with ``Page[JobOut]`` built the slow way, from ORM rows, so the hand-assembled
page JSON cannot drift from the schema. These run on PostgreSQL (the suite's database), whose
reads use autocommit connections without pre-ping (``core.db.run_read``). The writes here are
made in this process, whose session commits bump the change epoch of the fast reads at once;
tests/api/test_fast_reads.py covers writes from other connections.
"""

from __future__ import annotations

from sqlalchemy import select, text, update

from service_kit import job_body, make_key, upload_teacher

from dfmscd_service.api.auth import hash_key
from dfmscd_service.api.reads import job_reads
from dfmscd_service.api.reads.answer_cache import AnswerCache
from dfmscd_service.api.schemas import JobOut, Page, TeacherOut
from dfmscd_service.api.views import job_out, teacher_out
from dfmscd_service.core.db import get_read_engine, session_factory, session_scope
from dfmscd_service.core.models import Job, JobStudent, Teacher
from dfmscd_service.worker.recorder import EventRecorder


def _new_tenant(client, teacher_file, jobs: int = 1):
    auth = {"Authorization": f"Bearer {make_key('cached-reads')}"}
    teacher_id = upload_teacher(client, auth, teacher_file).json()["id"]
    ids = []
    for _ in range(jobs):
        r = client.post("/v1/jobs", headers=auth, json=job_body(teacher_id))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return auth, teacher_id, ids


def _poll(client, auth, job_id):
    r = client.get(f"/v1/jobs/{job_id}", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_cached_poll_shows_the_workers_writes(client, teacher_file) -> None:
    auth, _, (job_id,) = _new_tenant(client, teacher_file)
    first = _poll(client, auth, job_id)
    assert first["status"] == "queued" and first["progress"] == 0
    assert job_reads.answers.get(job_id, _version(job_id)) is not None  # the read above filled the cache

    with session_scope() as s:  # the worker's claim: job and students in one transaction
        s.execute(update(Job).where(Job.id == job_id).values(status="running", lease_owner="w1", progress=0.25))
        s.execute(update(JobStudent).where(JobStudent.job_id == job_id).values(status="running"))
    polled = _poll(client, auth, job_id)
    assert polled["status"] == "running" and polled["progress"] == 0.25
    assert [s["status"] for s in polled["students"]] == ["running"]

    # A metrics event, written by the worker's own recorder: student rows and the job's version together.
    EventRecorder(session_factory(), job_id, "w1").write("metrics", 1, 0.5, {"student_loss": {"resnet8": 1.25}})
    assert _poll(client, auth, job_id)["students"][0]["metrics"] == {"epoch": 1, "loss": 1.25}

    # What is served is what the database holds, field for field (built the slow way, from ORM rows).
    assert _poll(client, auth, job_id) == _slow_job(job_id)


def _slow_job(job_id):
    with session_scope() as s:
        return job_out(s.get(Job, job_id)).model_dump(mode="json")


def _version(job_id):
    with session_scope() as s:
        return s.scalar(select(Job.updated_at).where(Job.id == job_id))


def test_the_cached_list_pages_equal_the_schema_built_from_orm_rows(client, teacher_file) -> None:
    auth, teacher_id, ids = _new_tenant(client, teacher_file, jobs=3)
    with session_scope() as s:
        owner = s.scalar(select(Job.owner_id).where(Job.id == ids[0]))
        jobs = list(s.scalars(select(Job).where(Job.owner_id == owner).order_by(Job.id.desc())))
        expected = Page[JobOut](data=[job_out(j) for j in jobs[:2]], has_more=True, next=jobs[1].id)
        last = Page[JobOut](data=[job_out(j) for j in jobs[2:]], has_more=False, next=None)
        teachers = Page[TeacherOut](data=[teacher_out(s.get(Teacher, teacher_id))], has_more=False, next=None)
    for _ in range(2):  # built, then from the cache: the same bytes
        page = client.get("/v1/jobs", headers=auth, params={"limit": 2})
        assert page.status_code == 200 and page.headers["content-type"] == "application/json"
        assert page.content == expected.model_dump_json().encode()
        rest = client.get("/v1/jobs", headers=auth, params={"limit": 2, "after": expected.next})
        assert rest.content == last.model_dump_json().encode()
        assert client.get("/v1/teachers", headers=auth).content == teachers.model_dump_json().encode()
    filtered = client.get("/v1/jobs", headers=auth, params={"status": "running,succeeded"}).json()
    assert filtered == {"data": [], "has_more": False, "next": None}

    # A cancel (this process) and a change of progress (another process) both show on the next page.
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == ids[1]).values(progress=0.5))
    by_id = {j["id"]: j for j in client.get("/v1/jobs", headers=auth).json()["data"]}
    assert by_id[ids[0]]["status"] == "cancelled" and by_id[ids[1]]["progress"] == 0.5
    assert client.get("/v1/jobs", headers=auth, params={"status": "cancelled"}).json()["data"] == [by_id[ids[0]]]


def test_deleting_the_teacher_shows_in_a_cached_poll(client, teacher_file) -> None:
    auth, teacher_id, (job_id,) = _new_tenant(client, teacher_file)
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)  # no longer active: the teacher may go
    assert _poll(client, auth, job_id)["teacher_id"] == teacher_id
    assert client.delete(f"/v1/teachers/{teacher_id}", headers=auth).status_code == 204
    assert _poll(client, auth, job_id)["teacher_id"] is None
    assert client.get("/v1/teachers", headers=auth).json()["data"] == []


def test_a_cached_answer_is_still_refused_to_others_and_to_a_revoked_key(client, teacher_file, other_auth) -> None:
    auth, _, (job_id,) = _new_tenant(client, teacher_file)
    _poll(client, auth, job_id)
    assert client.get(f"/v1/jobs/{job_id}", headers=other_auth).status_code == 404
    with session_scope() as s:
        s.execute(text("UPDATE api_keys SET revoked_at = now() WHERE key_hash = :h"),
                  {"h": hash_key(auth["Authorization"].removeprefix("Bearer "))})
    r = client.get(f"/v1/jobs/{job_id}", headers=auth)
    assert r.status_code == 401 and r.json()["error"]["message"] == "API key has been revoked"
    assert client.get("/v1/jobs", headers=auth).status_code == 401


def test_a_read_survives_its_connection_being_dropped(client, teacher_file) -> None:
    # PostgreSQL restarted or a proxy cut the idle connection: the read engine has no pre-ping,
    # so run_read retries once on a fresh connection instead of answering 500.
    auth, _, (job_id,) = _new_tenant(client, teacher_file)
    engine = get_read_engine()
    assert engine.url.get_backend_name() == "postgresql"
    engine.dispose()
    _poll(client, auth, job_id)
    assert engine.pool.checkedin() == 1  # one connection: the dropped one is the one the next poll gets
    with engine.connect() as conn:  # the pooled connection the next poll will get back
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with session_scope() as s:
        assert s.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar() is True
    assert _poll(client, auth, job_id)["id"] == job_id
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid


def test_the_cache_is_bounded_and_checks_versions() -> None:
    from datetime import datetime, timezone

    v1, v2 = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc)
    cache = AnswerCache(max_bytes=10)
    cache.put("a", v1, b"12345")
    assert cache.get("a", v1) == b"12345" and cache.get("a", v2) is None
    cache.put("b", v1, b"678")
    cache.get("a", v1)  # a is now the most recently used
    cache.put("c", v1, b"9012")  # 12 bytes: b (least recent) goes
    assert cache.get("b", v1) is None and cache.get("a", v1) == b"12345" and cache.get("c", v1) == b"9012"
    assert cache.size_bytes == 9 and len(cache) == 2
    cache.put("huge", v1, b"x" * 11)  # larger than the cache: not kept, nothing else lost
    assert cache.get("huge", v1) is None and len(cache) == 2
    cache.put("a", v2, b"1")  # a new version replaces the old bytes
    assert cache.get("a", v1) is None and cache.get("a", v2) == b"1" and cache.size_bytes == 5
