"""Job creation, validation, idempotency, listing and cancellation (no worker runs here)."""

from __future__ import annotations

import pytest
from service_kit import assert_error, job_body, make_key, upload_teacher
from sqlalchemy import update

from dfmscd_service.core.db import session_scope
from dfmscd_service.core.models import Job


def test_create_answers_202_with_the_resolved_config(client, auth, teacher):
    r = client.post("/v1/jobs", headers=auth, json=job_body(
        teacher["id"], students=[{"architecture": "resnet8"}, {"architecture": "resnet8", "name": "second"}],
        hyperparameters={"lr_s": 0.01}, seed=7, metadata={"project": "x"}))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == 0.0
    assert job["teacher_id"] == teacher["id"]
    assert job["config"]["lr_s"] == 0.01 and job["config"]["kd_steps"] == 10  # override + fast preset
    assert job["seed"] == 7 and job["config"]["seed"] == 7
    assert job["budget"] == {"epochs": 2}
    assert job["metadata"] == {"project": "x"}
    assert [(s["name"], s["architecture"], s["status"]) for s in job["students"]] == [
        ("resnet8", "resnet8", "queued"), ("second", "resnet8", "queued")]
    assert job["students"][0]["parameters"] > 1000
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["id"] == job["id"]


def test_no_budget_means_the_config_epochs(client, auth, teacher):
    body = job_body(teacher["id"])
    del body["budget"]
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == 202
    assert r.json()["budget"] == {"epochs": r.json()["config"]["epochs"]}


def test_torchvision_student_gets_a_safe_default_name(client, auth, teacher):
    r = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"], students=[{"architecture": "tv/resnet18"}]))
    assert r.status_code == 202, r.text
    assert r.json()["students"][0]["name"] == "tv_resnet18"


@pytest.mark.parametrize(
    ("change", "code", "text"),
    [
        (dict(students=[]), "validation_error", "between 1 and 16"),
        (dict(students=[{"architecture": "resnet8", "name": f"s{i}"} for i in range(17)]), "validation_error", "16"),
        (dict(students=[{"architecture": "resnet8"}, {"architecture": "resnet8"}]), "validation_error", "duplicate"),
        (dict(students=[{"architecture": "resnet8", "name": "../../etc/passwd"}]), "validation_error", "not a valid name"),
        (dict(students=[{"architecture": "resnet8", "name": ".hidden"}]), "validation_error", "not a valid name"),
        (dict(students=[{"architecture": "resnet8", "name": "naïve"}]), "validation_error", "not a valid name"),
        (dict(students=[{"architecture": "resnet8", "name": "x" * 65}]), "validation_error", "not a valid name"),
        (dict(students=[{"architecture": "resnet9000"}]), "unknown_architecture", "resnet9000"),
        (dict(students=[{"architecture": "resnet8", "arch_kwargs": {"bogus": 1}}]), "invalid_student", "bogus"),
        (dict(preset="turbo"), "invalid_config", "turbo"),
        (dict(hyperparameters={"lr_s": -1}), "invalid_config", "lr_s"),
        (dict(hyperparameters={"temperature": 0}), "invalid_config", "temperature"),
        (dict(hyperparameters={"no_such_knob": 1}), "invalid_config", "no_such_knob"),
        (dict(seed=1, hyperparameters={"seed": 2}), "invalid_config", "seed"),
        (dict(budget={"epochs": 0}), "invalid_budget", "epochs"),
        (dict(budget={"seconds": 0}), "invalid_budget", "seconds"),
        (dict(budget={"seconds": 10 * 365 * 86400}), "invalid_budget", "seconds"),
        (dict(budget={"epochs": 2, "seconds": 5}), "invalid_budget", "exactly one"),
        (dict(budget={}), "invalid_budget", "exactly one"),
        (dict(metadata={"blob": "x" * 20000}), "validation_error", "metadata"),
        (dict(unexpected=1), "validation_error", "unexpected"),
        (dict(students="resnet8"), "validation_error", "students"),
    ],
)
def test_invalid_requests_are_422_with_a_precise_message(client, auth, teacher, change, code, text):
    r = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"], **change))
    assert_error(r, 422, code, text)


def test_nan_in_metadata_is_refused(client, auth, teacher):
    raw = '{"teacher_id": "%s", "students": [{"architecture": "resnet8"}], "metadata": {"x": NaN}}' % teacher["id"]
    r = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=raw)
    assert_error(r, 422, "validation_error", "NaN")


def test_unknown_teacher_is_404(client, auth):
    assert_error(client.post("/v1/jobs", headers=auth, json=job_body("tch_nope")), 404, "not_found", "tch_nope")


def test_malformed_json_and_wrong_content_type(client, auth):
    r = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=b'{"teacher_id": ')
    assert_error(r, 422, "validation_error", "JSON")
    r = client.post("/v1/jobs", headers={**auth, "Content-Type": "text/plain"}, content=b"hello")
    assert r.status_code in (415, 422) and "error" in r.json()


def test_idempotency_key_replays_or_conflicts(client, auth, other_auth, teacher):
    body = job_body(teacher["id"], metadata={"run": "idem"})
    h = {**auth, "Idempotency-Key": "key-123"}
    first = client.post("/v1/jobs", headers=h, json=body)
    again = client.post("/v1/jobs", headers=h, json=body)
    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    other_body = client.post("/v1/jobs", headers=h, json={**body, "seed": 99})
    assert_error(other_body, 409, "idempotency_conflict")
    # the same key is a different key for another owner (who cannot see this teacher anyway)
    assert_error(client.post("/v1/jobs", headers={**other_auth, "Idempotency-Key": "key-123"}, json=body), 404)


def test_list_pagination_and_status_filter(client, teacher_file):
    headers = {"Authorization": f"Bearer {make_key('pager')}"}
    tid = upload_teacher(client, headers, teacher_file).json()["id"]
    ids = [client.post("/v1/jobs", headers=headers, json=job_body(tid)).json()["id"] for _ in range(5)]
    seen, after = [], None
    while True:
        page = client.get("/v1/jobs", headers=headers, params={"limit": 2, **({"after": after} if after else {})}).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            assert page["next"] is None
            break
        after = page["next"]
    assert seen == ids[::-1]
    client.post(f"/v1/jobs/{ids[1]}/cancel", headers=headers)
    cancelled = client.get("/v1/jobs?status=cancelled", headers=headers).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[1]]
    both = client.get("/v1/jobs?status=cancelled,queued&limit=100", headers=headers).json()
    assert len(both["data"]) == 5
    assert_error(client.get("/v1/jobs?status=exploded", headers=headers), 422, "validation_error", "status")
    assert_error(client.get("/v1/jobs?limit=0", headers=headers), 422)
    assert_error(client.get("/v1/jobs?after=../../x", headers=headers), 422)


def test_cancel_queued_job_is_immediate_and_idempotent(client, auth, teacher):
    jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
    r = client.post(f"/v1/jobs/{jid}/cancel", headers=auth)
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert all(s["status"] == "cancelled" and s["weights_url"] is None for s in job["students"])
    assert client.post(f"/v1/jobs/{jid}/cancel", headers=auth).json()["status"] == "cancelled"


def test_cancel_running_job_asks_the_worker(client, auth, teacher):
    jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == jid).values(status="running"))
    assert client.post(f"/v1/jobs/{jid}/cancel", headers=auth).json()["status"] == "cancelling"
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == jid).values(status="succeeded"))
    assert_error(client.post(f"/v1/jobs/{jid}/cancel", headers=auth), 409, "job_finished")


def test_concurrent_job_limit_is_429(client, teacher_file, monkeypatch):
    from dfmscd_service.core.settings import get_settings

    headers = {"Authorization": f"Bearer {make_key('busy')}"}
    tid = upload_teacher(client, headers, teacher_file).json()["id"]
    monkeypatch.setenv("DFMSCD_MAX_CONCURRENT_JOBS_PER_KEY", "2")
    get_settings.cache_clear()
    try:
        for _ in range(2):
            assert client.post("/v1/jobs", headers=headers, json=job_body(tid)).status_code == 202
        r = client.post("/v1/jobs", headers=headers, json=job_body(tid))
        assert_error(r, 429, "too_many_jobs")
        assert int(r.headers["Retry-After"]) > 0
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
