"""Webhook endpoints through the API: create (secret once), list pages, get, delete, rotate,
validation, SSRF refusals, tenants, and the outbox row a queued job's cancel writes (delivery is
the worker's: tests/worker/test_webhook_delivery.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from service_kit import assert_error, job_body, make_key
from sqlalchemy import select

from dfmscd_service.core.db import session_scope
from dfmscd_service.core.models import WebhookDelivery
from dfmscd_service.core.settings import get_settings

EVENTS = ["job.succeeded", "job.failed", "job.cancelled", "job.running"]
HOOK = "http://127.0.0.1:9/hook"  # allowed: the test settings set DFMSCD_WEBHOOK_ALLOW_PRIVATE=true


@pytest.fixture(scope="module")
def owner() -> dict[str, str]:
    """A key of its own: no other test's jobs reach these endpoints."""
    return {"Authorization": f"Bearer {make_key('webhooks-api')}"}


@pytest.fixture
def private_refused(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(get_settings(), "webhook_allow_private", False)
    yield


def create(client: Any, headers: dict[str, str], url: str = HOOK, events: list[str] | None = None) -> Any:
    return client.post("/v1/webhook-endpoints", headers=headers, json={"url": url, "events": events or EVENTS})


def test_create_shows_the_secret_once_then_get_list_rotate_delete(client, owner):
    r = create(client, owner)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["id"].startswith("whe_") and made["url"] == HOOK and made["enabled"] is True
    assert sorted(made["events"]) == sorted(EVENTS)
    assert made["secret"].startswith("whsec_") and len(base64.b64decode(made["secret"][6:])) == 32

    got = client.get(f"/v1/webhook-endpoints/{made['id']}", headers=owner).json()
    assert "secret" not in got and got["id"] == made["id"] and got["consecutive_failures"] == 0

    rotated = client.post(f"/v1/webhook-endpoints/{made['id']}/rotate-secret", headers=owner)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["id"] == made["id"]
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != made["secret"]

    assert client.delete(f"/v1/webhook-endpoints/{made['id']}", headers=owner).status_code == 204
    assert_error(client.get(f"/v1/webhook-endpoints/{made['id']}", headers=owner), 404, "not_found")
    assert_error(client.delete(f"/v1/webhook-endpoints/{made['id']}", headers=owner), 404, "not_found")


def test_list_is_cursor_paged_newest_first(client):
    headers = {"Authorization": f"Bearer {make_key('webhooks-pages')}"}
    ids = [create(client, headers).json()["id"] for _ in range(3)]
    first = client.get("/v1/webhook-endpoints?limit=2", headers=headers).json()
    assert [e["id"] for e in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert all("secret" not in e for e in first["data"])
    rest = client.get(f"/v1/webhook-endpoints?limit=2&after={first['next']}", headers=headers).json()
    assert [e["id"] for e in rest["data"]] == [ids[0]] and rest["has_more"] is False and rest["next"] is None


@pytest.mark.parametrize(("body", "contains"), [
    ({"url": HOOK, "events": ["job.exploded"]}, "events"),
    ({"url": HOOK, "events": []}, "events"),
    ({"events": ["job.failed"]}, "url"),
    ({"url": HOOK, "events": ["job.failed"], "secret": "whsec_mine"}, "secret"),
    ({"url": "ftp://example.com/hook", "events": ["job.failed"]}, "scheme must be http or https"),
    ({"url": "file:///etc/passwd", "events": ["job.failed"]}, "scheme must be http or https"),
    ({"url": "http://user:pw@127.0.0.1/hook", "events": ["job.failed"]}, "credentials"),
    ({"url": "http://127.0.0.1:99999/hook", "events": ["job.failed"]}, "not valid"),
    ({"url": "http:///nohost", "events": ["job.failed"]}, "no host"),
    ({"url": "http://127.0.0.1/" + "a" * 2100, "events": ["job.failed"]}, "url"),
])
def test_bad_bodies_are_422_saying_why(client, owner, body, contains):
    r = client.post("/v1/webhook-endpoints", headers=owner, json=body)
    assert contains in assert_error(r, 422)["message"]


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://2130706433/hook", "loopback"),  # 127.0.0.1 written as one number
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://10.1.2.3/hook", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("https://192.168.1.10/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://100.100.100.200/latest/meta-data/", "metadata"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://240.0.0.1/hook", "reserved"),
    ("http://100.64.0.1/hook", "not publicly routable"),
    ("http://no-such-host.invalid/hook", "cannot be resolved"),
])
def test_private_and_metadata_addresses_are_refused(client, owner, private_refused, url, why):
    error = assert_error(create(client, owner, url), 422, "invalid_url")
    assert why in error["message"], error


def test_a_public_address_is_accepted_when_private_ones_are_refused(client, owner, private_refused):
    r = create(client, owner, "https://93.184.216.34/hook")  # an IP literal: no DNS needed
    assert r.status_code == 201, r.text
    assert client.delete(f"/v1/webhook-endpoints/{r.json()['id']}", headers=owner).status_code == 204


def test_endpoints_per_key_are_limited(client, monkeypatch):
    headers = {"Authorization": f"Bearer {make_key('webhooks-limit')}"}
    monkeypatch.setattr(get_settings(), "webhook_max_endpoints_per_key", 2)
    assert create(client, headers).status_code == 201 and create(client, headers).status_code == 201
    assert "limit per key is 2" in assert_error(create(client, headers), 409, "too_many_endpoints")["message"]


def test_tenants_see_only_their_own_endpoints(client, owner, other_auth):
    mine = create(client, owner).json()["id"]
    theirs = create(client, other_auth).json()["id"]
    base = f"/v1/webhook-endpoints/{mine}"
    for method, path in (("GET", base), ("DELETE", base), ("POST", f"{base}/rotate-secret"),
                         ("POST", f"{base}/enable"), ("GET", f"{base}/deliveries")):
        assert_error(client.request(method, path, headers=other_auth), 404, "not_found")
    assert client.get(base, headers=owner).status_code == 200  # untouched by the intruder
    listed = [e["id"] for e in client.get("/v1/webhook-endpoints?limit=100", headers=other_auth).json()["data"]]
    assert theirs in listed and mine not in listed
    assert_error(client.get("/v1/webhook-endpoints/not-an-id", headers=owner), 404, "not_found")
    assert_error(client.get("/v1/webhook-endpoints", headers={"Authorization": "Bearer nope"}), 401)


def test_cancelling_a_queued_job_queues_the_event_in_the_same_transaction(client, auth, teacher, other_auth):
    """No worker runs in these tests: the job stays queued, and the event waits in the outbox."""
    ours = create(client, auth, events=["job.cancelled"]).json()["id"]
    running_only = create(client, auth, events=["job.running"]).json()["id"]
    intruder = create(client, other_auth, events=["job.cancelled"]).json()["id"]
    try:
        jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
        assert client.post(f"/v1/jobs/{jid}/cancel", headers=auth).json()["status"] == "cancelled"
        log = client.get(f"/v1/webhook-endpoints/{ours}/deliveries", headers=auth).json()
        [delivery] = [d for d in log["data"] if d["job_id"] == jid]
        assert delivery["event_type"] == "job.cancelled" and delivery["status"] == "pending"
        assert delivery["attempts"] == 0 and delivery["attempt_log"] == [] and delivery["next_attempt_at"]
        assert delivery["id"].startswith("msg_")
        with session_scope() as s:
            body = json.loads(s.scalar(select(WebhookDelivery.payload).where(WebhookDelivery.id == delivery["id"])))
        assert body["type"] == "job.cancelled" and body["timestamp"].endswith("Z")
        assert body["data"] == client.get(f"/v1/jobs/{jid}", headers=auth).json()  # the job, as JobOut says
        # Only endpoints that asked for the event, and only the job owner's.
        assert client.get(f"/v1/webhook-endpoints/{running_only}/deliveries", headers=auth).json()["data"] == []
        assert client.get(f"/v1/webhook-endpoints/{intruder}/deliveries", headers=other_auth).json()["data"] == []
    finally:
        for eid, h in ((ours, auth), (running_only, auth), (intruder, other_auth)):
            client.delete(f"/v1/webhook-endpoints/{eid}", headers=h)
