"""Webhooks delivered by the real worker to a real local receiver: one tiny job brings
job.running and job.succeeded, signed (checked with the standardwebhooks package); a 500 is
retried with the same message; a failing endpoint is disabled; redirects are not followed;
rotation changes the signature; the delivery log shows every attempt.

The test settings (service_kit.service_env) allow 127.0.0.1, retry after 0.2 s and disable an
endpoint at its 3rd failure in a row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from service_kit import TINY_HYPERPARAMETERS, job_body, make_key, upload_teacher, wait_for
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from webhook_receiver import Received, Receiver

from dfmscd_service.core.db import session_scope
from dfmscd_service.core.settings import Settings
from dfmscd_service.core.webhooks import record_job_event
from dfmscd_service.worker.webhooks import post

TIMEOUT = 300  # a job on two shared cores, generous


def _for_job(reqs: list[Received], path: str, job_id: str) -> list[Received]:
    return [r for r in reqs if r.path == path and json.loads(r.body)["data"]["id"] == job_id]


def _finished(log: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return log if log and all(d["status"] != "pending" for d in log) else None


def _disabled(endpoint: dict[str, Any]) -> dict[str, Any] | None:
    return endpoint if not endpoint["enabled"] else None


class Hooks:
    def __init__(self, client: Any, headers: dict[str, str], receiver: Receiver, teacher_id: str) -> None:
        self.client, self.headers, self.receiver = client, headers, receiver
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.teacher_id = teacher_id
        self.job_id = ""

    def add(self, name: str, answers: list[int], events: list[str], redirect_to: str | None = None) -> None:
        url = self.receiver.route(f"/{name}", answers, redirect_to)
        r = self.client.post("/v1/webhook-endpoints", headers=self.headers, json={"url": url, "events": events})
        assert r.status_code == 201, r.text
        self.endpoints[name] = r.json()

    def endpoint(self, name: str) -> dict[str, Any]:
        return self.client.get(f"/v1/webhook-endpoints/{self.endpoints[name]['id']}", headers=self.headers).json()

    def deliveries(self, name: str) -> list[dict[str, Any]]:
        r = self.client.get(f"/v1/webhook-endpoints/{self.endpoints[name]['id']}/deliveries?limit=100",
                            headers=self.headers)
        assert r.status_code == 200, r.text
        return [d for d in r.json()["data"] if d["job_id"] == self.job_id]


@pytest.fixture(scope="module")
def hooks(client, teacher_file, celery_worker) -> Iterator[Hooks]:
    """Four endpoints of a key of their own, then one tiny job, run by the session's worker."""
    headers = {"Authorization": f"Bearer {make_key('webhooks-worker')}"}
    r = upload_teacher(client, headers, teacher_file)
    assert r.status_code == 201, r.text
    with Receiver() as receiver:
        h = Hooks(client, headers, receiver, r.json()["id"])
        h.add("ok", [200], ["job.running", "job.succeeded", "job.failed", "job.cancelled"])
        h.add("flaky", [500, 500, 200], ["job.succeeded"])
        h.add("down", [500], ["job.succeeded"])
        h.add("moved", [302], ["job.succeeded"], redirect_to=receiver.base_url + "/sink")
        body = job_body(h.teacher_id, hyperparameters=TINY_HYPERPARAMETERS, budget={"epochs": 1})
        created = client.post("/v1/jobs", headers=headers, json=body)
        assert created.status_code == 202, created.text
        h.job_id = created.json()["id"]
        receiver.wait_for(lambda reqs: any(json.loads(r.body)["type"] == "job.succeeded"
                                           for r in _for_job(reqs, "/ok", h.job_id)),
                          TIMEOUT, "job.succeeded at /ok")
        try:
            yield h
        finally:
            for e in h.endpoints.values():
                client.delete(f"/v1/webhook-endpoints/{e['id']}", headers=headers)


def test_running_and_succeeded_arrive_signed_with_the_job(hooks, celery_worker):
    reqs = _for_job(hooks.receiver.requests, "/ok", hooks.job_id)
    secret = hooks.endpoints["ok"]["secret"]
    bodies = [Webhook(secret).verify(r.body, r.headers) for r in reqs]  # raises unless signed right
    assert sorted(b["type"] for b in bodies) == ["job.running", "job.succeeded"], celery_worker.log()
    by_type = {b["type"]: b for b in bodies}
    assert by_type["job.running"]["data"]["status"] == "running"
    job = hooks.client.get(f"/v1/jobs/{hooks.job_id}", headers=hooks.headers).json()
    assert job["status"] == "succeeded" and by_type["job.succeeded"]["data"] == job  # the job, as JobOut says
    assert all(b["timestamp"].endswith("Z") for b in bodies)
    for r in reqs:
        assert r.headers["content-type"] == "application/json"
        assert r.headers["webhook-signature"].startswith("v1,")
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(r.body.replace(b"succeeded", b"failed").replace(b"running", b"queued"), r.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "QUJD" * 8).verify(r.body, r.headers)
    log = wait_for(lambda: _finished(hooks.deliveries("ok")), TIMEOUT,
                   what="both deliveries to be recorded")  # the log is written after the answer
    assert {d["id"] for d in log} == {r.headers["webhook-id"] for r in reqs}
    assert all(d["status"] == "succeeded" and d["attempts"] == 1 and d["next_attempt_at"] is None for d in log)
    assert [a["status_code"] for d in log for a in d["attempt_log"]] == [200, 200]


def test_a_500_is_retried_with_the_same_message_until_it_succeeds(hooks):
    [delivery] = wait_for(lambda: [d for d in hooks.deliveries("flaky") if d["status"] != "pending"], TIMEOUT,
                          what="the flaky endpoint's delivery to finish")
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 3, delivery
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]
    assert [a["error"] for a in delivery["attempt_log"]] == ["HTTP 500", "HTTP 500", None]
    assert delivery["last_status_code"] == 200 and delivery["next_attempt_at"] is None
    reqs = _for_job(hooks.receiver.requests, "/flaky", hooks.job_id)
    assert len(reqs) == 3 and {r.headers["webhook-id"] for r in reqs} == {delivery["id"]}
    assert len({r.body for r in reqs}) == 1  # the same bytes every time; each attempt signed anew
    for r in reqs:
        Webhook(hooks.endpoints["flaky"]["secret"]).verify(r.body, r.headers)
    endpoint = hooks.endpoint("flaky")
    assert endpoint["enabled"] is True and endpoint["consecutive_failures"] == 0


def test_an_endpoint_that_keeps_failing_is_disabled(hooks):
    endpoint = wait_for(lambda: _disabled(hooks.endpoint("down")), TIMEOUT, what="the failing endpoint to be disabled")
    assert "3 failed attempts in a row" in endpoint["disabled_reason"] and endpoint["consecutive_failures"] == 3
    [delivery] = hooks.deliveries("down")
    # Given up at the 3rd failure although the schedule allows 5 attempts.
    assert delivery["status"] == "failed" and delivery["attempts"] == 3 and delivery["next_attempt_at"] is None
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 500]
    assert "endpoint disabled" in delivery["last_error"]
    assert len(_for_job(hooks.receiver.requests, "/down", hooks.job_id)) == 3


def test_redirects_are_not_followed(hooks):
    wait_for(lambda: not hooks.endpoint("moved")["enabled"], TIMEOUT, what="the redirecting endpoint to be disabled")
    [delivery] = hooks.deliveries("moved")
    assert delivery["last_status_code"] == 302 and delivery["status"] == "failed"
    assert all("redirect to" in a["error"] and "not followed" in a["error"] for a in delivery["attempt_log"])
    assert hooks.receiver.received("/sink") == []


def test_rotation_changes_the_signing_secret(hooks):
    old = hooks.endpoints["ok"]["secret"]
    r = hooks.client.post(f"/v1/webhook-endpoints/{hooks.endpoints['ok']['id']}/rotate-secret", headers=hooks.headers)
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    seen = {req.headers["webhook-id"] for req in hooks.receiver.received("/ok")}
    with session_scope() as s:  # the outbox write the worker makes when a job ends, once more
        # ok and flaky: the two disabled endpoints get no new events
        assert record_job_event(s, hooks.job_id, "job.succeeded") == 2
    fresh = hooks.receiver.wait_for(
        lambda reqs: [q for q in reqs if q.path == "/ok" and q.headers["webhook-id"] not in seen], TIMEOUT,
        "a delivery signed after the rotation")[0]
    assert Webhook(new).verify(fresh.body, fresh.headers)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(fresh.body, fresh.headers)


def test_delivery_time_check_refuses_a_private_address():
    """The worker checks the address again before each attempt (DNS may have changed)."""
    with Receiver() as receiver, httpx.Client(timeout=5, follow_redirects=False) as http:
        outcome = post(http, receiver.route("/guarded", [200]), "whsec_" + "QUJD" * 8, "msg_test", "{}",
                       Settings(webhook_allow_private=False))
        assert outcome.status_code is None and outcome.error is not None
        assert outcome.error.startswith("refused:") and "loopback" in outcome.error
        allowed = post(http, receiver.route("/open", [204]), "whsec_" + "QUJD" * 8, "msg_test", "{}",
                       Settings(webhook_allow_private=True))
        assert allowed.ok and allowed.status_code == 204
        assert receiver.received("/guarded") == [] and len(receiver.received("/open")) == 1
