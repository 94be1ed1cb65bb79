"""API keys and tenants: 401 without a valid key, 404 (never 403) for another owner's ids."""

from __future__ import annotations

import pytest
from service_kit import assert_error, job_body, make_key
from sqlalchemy import select

from dfmscd_service.api.auth import hash_key, revoke_api_key
from dfmscd_service.core.db import session_scope
from dfmscd_service.core.models import ApiKey


@pytest.mark.parametrize("path", ["/v1/teachers", "/v1/jobs", "/v1/architectures", "/v1/jobs/job_x/events"])
def test_protected_routes_need_a_key(client, path):
    r = client.get(path)
    assert_error(r, 401, "unauthorized", "Authorization")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(client.get(path, headers={"Authorization": "Bearer not-a-key"}), 401, "unauthorized", "invalid")
    assert_error(client.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "unauthorized")


def test_public_routes(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "dfmscd"
    assert client.get("/docs").status_code == 200


def test_keys_are_stored_hashed(client):
    secret = make_key("hashed")
    with session_scope() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.name == "hashed"))
        all_hashes = list(s.scalars(select(ApiKey.key_hash)))
    assert row.key_hash == hash_key(secret) and secret not in all_hashes
    assert len(secret) >= 40


def test_revoked_key_stops_working_at_once(client):
    secret = make_key("to-revoke")
    h = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/jobs", headers=h).status_code == 200
    with session_scope() as s:
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(secret)))
        assert revoke_api_key(s, key_id)
    assert_error(client.get("/v1/jobs", headers=h), 401, "unauthorized", "revoked")


def test_another_owner_sees_404_everywhere(client, auth, other_auth, teacher):
    jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
    tid = teacher["id"]
    requests = [
        ("GET", f"/v1/teachers/{tid}"),
        ("DELETE", f"/v1/teachers/{tid}"),
        ("GET", f"/v1/jobs/{jid}"),
        ("POST", f"/v1/jobs/{jid}/cancel"),
        ("GET", f"/v1/jobs/{jid}/events"),
        ("GET", f"/v1/jobs/{jid}/students/resnet8"),
        ("GET", f"/v1/jobs/{jid}/students/resnet8/weights"),
        ("GET", f"/v1/jobs/{jid}/samples.png"),
    ]
    for method, path in requests:
        assert_error(client.request(method, path, headers=other_auth), 404, "not_found")
    assert_error(client.post("/v1/jobs", headers=other_auth, json=job_body(tid)), 404, "not_found")
    assert tid not in [t["id"] for t in client.get("/v1/teachers?limit=100", headers=other_auth).json()["data"]]
    assert jid not in [j["id"] for j in client.get("/v1/jobs?limit=100", headers=other_auth).json()["data"]]
    # and the owner still has both
    assert client.get(f"/v1/jobs/{jid}", headers=auth).json()["status"] == "queued"
    assert client.get(f"/v1/teachers/{tid}", headers=auth).status_code == 200
