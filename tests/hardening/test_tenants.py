"""Tenant isolation: two owners, every resource endpoint, in both directions.

Extends tests/dfmscd_service/api/test_auth.py (one direction, unfinished job) with: finished jobs whose
students really are stored (so the owner gets 200 where the intruder gets 404, in every
download format), mutating calls that must leave the victim's resource untouched, idempotency
keys scoped per owner, a scan of the whole database for a plaintext key, and revocation
checked on every endpoint, via the CLI, while the owner's second key keeps working.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from hardening_kit import live_server
from service_kit import assert_error, job_body, make_key, store_results_like_the_worker, upload_teacher
from sqlalchemy import inspect, select, text

from dfmscd_service.api.auth import create_api_key, hash_key
from dfmscd_service.core.db import get_engine, session_scope
from dfmscd_service.core.models import ApiKey, Job
from dfmscd_service.core.storage import get_storage

PNG = b"\x89PNG\r\n\x1a\n" + b"tenant-samples"


def _headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


class Tenant:
    """One owner with a key, a teacher and a finished job with a stored student."""

    def __init__(self, client: Any, name: str, teacher_file: Any, seed: int) -> None:
        self.secret = make_key(name)
        self.headers = _headers(self.secret)
        r = upload_teacher(client, self.headers, teacher_file)
        assert r.status_code == 201, r.text
        self.teacher = r.json()
        r = client.post("/v1/jobs", headers=self.headers, json=job_body(self.teacher["id"]))
        assert r.status_code == 202, r.text
        self.job_id = r.json()["id"]
        self.student_sha256 = store_results_like_the_worker(self.job_id, self.teacher["card"], PNG, seed)[0].sha256

    def new_teacher(self, client: Any, teacher_file: Any) -> str:
        r = upload_teacher(client, self.headers, teacher_file)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def new_job(self, client: Any) -> str:
        r = client.post("/v1/jobs", headers=self.headers, json=job_body(self.teacher["id"]))
        assert r.status_code == 202, r.text
        return r.json()["id"]


@pytest.fixture(scope="module")
def tenants(client, teacher_file) -> dict[str, Tenant]:
    return {"a": Tenant(client, "tenant-a", teacher_file, 1), "b": Tenant(client, "tenant-b", teacher_file, 2)}


# (what, method, path template, extra headers, owner's status). {t} teacher, {j} finished job.
READS = [
    ("get teacher", "GET", "/v1/teachers/{t}", {}, 200),
    ("get job", "GET", "/v1/jobs/{j}", {}, 200),
    ("job events", "GET", "/v1/jobs/{j}/events", {}, 200),
    ("job events (SSE)", "GET", "/v1/jobs/{j}/events", {"Accept": "text/event-stream"}, 200),
    ("student metadata", "GET", "/v1/jobs/{j}/students/resnet8", {}, 200),
    ("weights safetensors", "GET", "/v1/jobs/{j}/students/resnet8/weights", {}, 200),
    ("weights safetensors (range)", "GET", "/v1/jobs/{j}/students/resnet8/weights", {"Range": "bytes=0-7"}, 206),
    ("weights onnx", "GET", "/v1/jobs/{j}/students/resnet8/weights?format=onnx", {}, 200),
    ("weights torchscript", "GET", "/v1/jobs/{j}/students/resnet8/weights?format=torchscript", {}, 200),
    ("samples.png", "GET", "/v1/jobs/{j}/samples.png", {}, 200),
]
DIRECTIONS = [("a", "b"), ("b", "a")]


@pytest.mark.parametrize("owner,intruder", DIRECTIONS, ids=["b-reads-a", "a-reads-b"])
@pytest.mark.parametrize("what,method,template,extra,owner_status", READS, ids=[r[0] for r in READS])
def test_reads_of_another_owners_resources_are_404(client, tenants, owner, intruder, what, method, template,
                                                    extra, owner_status):
    victim, other = tenants[owner], tenants[intruder]
    path = template.format(t=victim.teacher["id"], j=victim.job_id)
    err = assert_error(client.request(method, path, headers={**other.headers, **extra}), 404, "not_found")
    assert victim.secret not in err["message"] and victim.student_sha256 not in err["message"]
    r = client.request(method, path, headers={**victim.headers, **extra})
    assert r.status_code == owner_status, (what, r.status_code, r.text[:300])
    if what == "weights safetensors":
        assert hashlib.sha256(r.content).hexdigest() == victim.student_sha256
    if what == "samples.png":
        assert r.content == PNG


@pytest.mark.parametrize("owner,intruder", DIRECTIONS, ids=["b-lists-a", "a-lists-b"])
def test_lists_never_show_another_owners_resources(client, tenants, owner, intruder):
    victim, other = tenants[owner], tenants[intruder]
    queries = ["/v1/teachers?limit=100", "/v1/jobs?limit=100", "/v1/jobs?limit=100&status=succeeded",
               "/v1/teachers?limit=100&after=tch_" + "f" * 28, "/v1/jobs?limit=100&after=job_" + "f" * 28]
    for q in queries:
        r = client.get(q, headers=other.headers)
        assert r.status_code == 200, r.text
        ids = {row["id"] for row in r.json()["data"]}
        assert victim.teacher["id"] not in ids and victim.job_id not in ids, q
        owners = {row.get("teacher_id") for row in r.json()["data"] if "teacher_id" in row}
        assert victim.teacher["id"] not in owners, q
    mine = client.get("/v1/jobs?limit=100", headers=victim.headers).json()["data"]
    assert victim.job_id in {row["id"] for row in mine}


@pytest.mark.parametrize("owner,intruder", DIRECTIONS, ids=["b-cancels-a", "a-cancels-b"])
def test_cancel_of_another_owners_job_is_404_and_changes_nothing(client, tenants, owner, intruder):
    victim, other = tenants[owner], tenants[intruder]
    jid = victim.new_job(client)
    assert_error(client.post(f"/v1/jobs/{jid}/cancel", headers=other.headers), 404, "not_found")
    with session_scope() as s:
        job = s.get(Job, jid)
        assert job.status == "queued" and job.cancel_requested_at is None
    assert client.post(f"/v1/jobs/{jid}/cancel", headers=victim.headers).status_code == 202


@pytest.mark.parametrize("owner,intruder", DIRECTIONS, ids=["b-deletes-a", "a-deletes-b"])
def test_delete_of_another_owners_teacher_is_404_and_keeps_the_file(client, tenants, teacher_file, owner, intruder):
    victim, other = tenants[owner], tenants[intruder]
    tid = victim.new_teacher(client, teacher_file)
    assert_error(client.delete(f"/v1/teachers/{tid}", headers=other.headers), 404, "not_found")
    body = client.get(f"/v1/teachers/{tid}", headers=victim.headers).json()
    assert get_storage().exists(f"teachers/{tid}/weights.safetensors")
    assert body["sha256"] == victim.teacher["sha256"]
    assert client.delete(f"/v1/teachers/{tid}", headers=victim.headers).status_code == 204
    assert not get_storage().exists(f"teachers/{tid}/weights.safetensors")


@pytest.mark.parametrize("owner,intruder", DIRECTIONS, ids=["b-uses-a", "a-uses-b"])
def test_jobs_cannot_use_another_owners_teacher_or_idempotency_key(client, tenants, owner, intruder):
    victim, other = tenants[owner], tenants[intruder]
    assert_error(client.post("/v1/jobs", headers=other.headers, json=job_body(victim.teacher["id"])), 404, "not_found")
    key = f"shared-key-{owner}"
    r1 = client.post("/v1/jobs", headers={**victim.headers, "Idempotency-Key": key}, json=job_body(victim.teacher["id"]))
    assert r1.status_code == 202
    # Same key from the other tenant: its own new job, never the victim's job, never a 409.
    r2 = client.post("/v1/jobs", headers={**other.headers, "Idempotency-Key": key}, json=job_body(other.teacher["id"]))
    assert r2.status_code == 202 and "Idempotent-Replayed" not in r2.headers
    assert r2.json()["id"] != r1.json()["id"] and r2.json()["teacher_id"] == other.teacher["id"]


def test_database_holds_no_plaintext_key(client, tenants):
    """Scan every column of every table (the api key table above all) for any key's secret."""
    secrets = [t.secret for t in tenants.values()] + [make_key("scan-me")]
    engine = get_engine()
    tables = inspect(engine).get_table_names()
    assert "api_keys" in tables
    with engine.connect() as conn:
        key_rows = conn.execute(text("SELECT * FROM api_keys")).mappings().all()
        assert len(key_rows) >= 3
        for table in tables:
            for row in conn.execute(text(f'SELECT * FROM "{table}"')).mappings():
                flat = " ".join(str(v) for v in row.values())
                for secret in secrets:
                    body = secret.removeprefix("dfk_")
                    assert body not in flat and body[:20] not in flat, f"key material in {table}"
    by_hash = {r["key_hash"]: r for r in key_rows}
    for secret in secrets:
        row = by_hash[hash_key(secret)]  # found only through its digest
        assert len(row["prefix"]) <= 10 and secret.startswith(row["prefix"])


def test_revoked_key_is_401_on_every_endpoint_at_once(client, tenants, teacher_file):
    """Revoked through the CLI entry point; the owner's second key keeps working."""
    from dfmscd_service.cli import revoke_key

    owner = tenants["a"]
    with session_scope() as s:
        owner_id = s.scalar(select(ApiKey.owner_id).where(ApiKey.key_hash == hash_key(owner.secret)))
        row, second = create_api_key(s, "tenant-a-second", owner_id=owner_id)
        doomed_id = row.id
    doomed = _headers(second)
    paths = [t.format(t=owner.teacher["id"], j=owner.job_id) for _, _, t, _, _ in READS]
    assert client.get(paths[0], headers=doomed).status_code == 200  # same owner, so it sees A's teacher
    assert revoke_key(doomed_id) == 0
    for path in [*paths, "/v1/teachers", "/v1/jobs", "/v1/architectures"]:
        assert_error(client.get(path, headers=doomed), 401, "unauthorized", "revoked")
    assert_error(client.post(f"/v1/jobs/{owner.job_id}/cancel", headers=doomed), 401, "unauthorized")
    assert_error(client.delete(f"/v1/teachers/{owner.teacher['id']}", headers=doomed), 401, "unauthorized")
    assert_error(upload_teacher(client, doomed, teacher_file), 401, "unauthorized")
    assert client.get(paths[0], headers=owner.headers).status_code == 200
    assert revoke_key(doomed_id) != 0  # a second revoke says so


def test_revoking_a_key_ends_an_event_stream_it_opened(client, tenants):
    """An SSE stream authenticated before the revocation stops at its next poll with an error event."""
    from dfmscd_service.cli import revoke_key

    owner = tenants["a"]
    with session_scope() as s:
        owner_id = s.scalar(select(ApiKey.owner_id).where(ApiKey.key_hash == hash_key(owner.secret)))
        row, secret = create_api_key(s, "tenant-a-streaming", owner_id=owner_id)
        key_id = row.id
    # a job that cannot end during the test: queued, no worker on this database, a long budget
    r = client.post("/v1/jobs", headers=owner.headers, json=job_body(owner.teacher["id"], budget={"epochs": 10_000}))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # Keep-alives every second bound the test if the stream never ends: only a poll that began
    # before the revocation was committed may still send one; a second one means the stream
    # outlived the key.
    with live_server(RATE_LIMIT_PER_MINUTE="0", SSE_KEEPALIVE_SECONDS="1") as url:
        headers = {**_headers(secret), "Accept": "text/event-stream"}
        with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=30) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines) == "retry: 2000"  # the stream is authenticated and running
            assert revoke_key(key_id) == 0
            rest: list[str] = []
            for line in lines:  # ends when the server closes the stream
                rest.append(line)
                assert rest.count(": keep-alive") < 2, f"the stream outlived its revoked key: {rest}"
    assert "event: error" in rest, rest
    data = rest[rest.index("event: error") + 1]
    assert data.startswith("data: ") and '"code": "unauthorized"' in data and "revoked" in data
    assert not any(line.startswith("event: end") for line in rest)
    # the owner's other key still reads (and can cancel) this job
    assert client.get(f"/v1/jobs/{job_id}", headers=owner.headers).status_code == 200
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=owner.headers).status_code in (200, 202)
