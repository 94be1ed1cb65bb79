"""Upload → job → real Celery worker (Redis + PostgreSQL) → succeeded → download → predicts."""

from __future__ import annotations

import hashlib
import json

import torch
from service_kit import TINY_HYPERPARAMETERS, job_body, wait_for

from dfmscd.io import load_model


def poll_job(client, auth, job_id: str, statuses: tuple[str, ...], timeout: float = 600) -> dict:
    """Until the job reaches one of ``statuses``; ``timeout`` only bounds a broken run (the session
    worker may first run jobs that other test folders left queued)."""
    def check():
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        return job if job["status"] in statuses else None

    return wait_for(check, timeout, interval=0.25, what=f"job {job_id} to reach {statuses}")


def test_distillation_end_to_end(client, auth, teacher, teacher_file, celery_worker, tmp_path):
    body = job_body(teacher["id"], students=[{"architecture": "resnet8", "name": "small"}],
                    preset="fast", budget={"epochs": 2})
    created = client.post("/v1/jobs", headers=auth, json=body)
    assert created.status_code == 202, created.text
    jid = created.json()["id"]
    job = poll_job(client, auth, jid, ("succeeded", "failed", "cancelled"))
    assert job["status"] == "succeeded", (job["error"], celery_worker.log())
    assert job["progress"] == 1.0 and job["attempts"] == 1 and job["epoch"] == 2
    assert job["report"]["epochs_completed"] == 2
    student = job["students"][0]
    assert student["status"] == "succeeded" and student["partial"] is False and student["parameters"] > 0

    r = client.get(f"/v1/jobs/{jid}/students/small/weights", headers=auth)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == student["sha256"] == r.headers["etag"].strip('"')
    path = tmp_path / "small.safetensors"
    path.write_bytes(r.content)
    module, card = load_model(path)
    assert card.input_shape == (1, 8, 8) and card.num_classes == 10
    logits = module(torch.randn(5, 1, 8, 8))
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()

    events = client.get(f"/v1/jobs/{jid}/events?limit=1000", headers=auth).json()["data"]
    kinds = [e["kind"] for e in events]
    assert {"log", "progress", "metrics", "checkpoint"} <= set(kinds)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["data"]["message"] == "job succeeded"
    png = client.get(f"/v1/jobs/{jid}/samples.png", headers=auth)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    # the checkpoint scratch space is freed once the job is done
    from dfmscd_service.core.settings import get_settings

    assert not get_settings().job_dir(jid).exists()


def test_cancel_while_running_keeps_partial_students(client, auth, teacher, celery_worker, pause_point, tmp_path):
    # Held right after the epoch-2 checkpoint: the cancel request lands at a known point, however
    # fast or slow the job runs; without the cancel it would run on to epoch 4.
    body = job_body(teacher["id"], hyperparameters=TINY_HYPERPARAMETERS, budget={"epochs": 4},
                    metadata=pause_point.metadata(2))
    jid = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    held = pause_point.wait_paused(jid, lambda: client.get(f"/v1/jobs/{jid}", headers=auth).json()["status"])
    assert held["epoch"] == 2
    r = client.post(f"/v1/jobs/{jid}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["status"] == "cancelling", r.text  # it is running (held)
    pause_point.release(jid)
    job = poll_job(client, auth, jid, ("succeeded", "failed", "cancelled"))
    assert job["status"] == "cancelled", (job["error"], celery_worker.log())
    assert job["progress"] < 1.0 and job["epoch"] == 2  # no epoch after the request
    student = job["students"][0]
    assert student["status"] == "cancelled" and student["partial"] is True and student["sha256"]
    # The worker (cancel poll 0) reads the job's status before every step, and no step ran
    # between the request and the release: it stops before the first step after it.
    events = client.get(f"/v1/jobs/{jid}/events?limit=1000", headers=auth).json()["data"]
    [stopped] = [e for e in events if "steps_after_cancel_request" in e["data"]]
    assert stopped["data"]["steps_after_cancel_request"] == 0, stopped
    print(f"cancel figures: {stopped['data']}")  # for docs/reliability.md (pytest -s)
    assert events[-1]["data"]["message"] == "job cancelled"
    data = client.get(f"/v1/jobs/{jid}/students/resnet8/weights", headers=auth).content
    (tmp_path / "p.safetensors").write_bytes(data)
    module, _ = load_model(tmp_path / "p.safetensors")
    assert module(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_redelivered_message_for_a_finished_job_does_nothing(client, auth, teacher, celery_worker):
    from dfmscd_service.core.broker import enqueue_job

    jid = client.post("/v1/jobs", headers=auth, json=job_body(
        teacher["id"], hyperparameters=TINY_HYPERPARAMETERS, budget={"epochs": 1})).json()["id"]
    done = poll_job(client, auth, jid, ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done["error"]
    enqueue_job(jid)  # a duplicate message, as after a broker redelivery
    # the whole log: the session worker may log other jobs' lines meanwhile (the tail can drop it)
    wait_for(lambda: celery_worker.full_log().count(f"job {jid}: not claimable") >= 1, 600, 0.25,
             what="the worker to ignore the duplicate")
    after = client.get(f"/v1/jobs/{jid}", headers=auth).json()
    assert after["attempts"] == 1 and after["updated_at"] == done["updated_at"]
    assert json.dumps(after["students"]) == json.dumps(done["students"])


def test_a_failing_job_ends_failed_with_a_reason_and_the_worker_goes_on(client, auth, teacher_file, celery_worker):
    from service_kit import upload_teacher

    from dfmscd_service.core.settings import get_settings

    broken = upload_teacher(client, auth, teacher_file).json()
    for f in (get_settings().storage_dir / "teachers" / broken["id"]).iterdir():
        f.unlink()  # the teacher's weights vanish from storage
    bad = client.post("/v1/jobs", headers=auth, json=job_body(broken["id"], hyperparameters=TINY_HYPERPARAMETERS,
                                                              budget={"epochs": 1})).json()["id"]
    job = poll_job(client, auth, bad, ("succeeded", "failed", "cancelled"))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "teacher_missing" and "missing" in job["error"]["message"]
    assert all(s["status"] == "failed" for s in job["students"]) and job["finished_at"]
    events = client.get(f"/v1/jobs/{bad}/events", headers=auth).json()["data"]
    assert events[-1]["data"]["code"] == "teacher_missing"

    good = upload_teacher(client, auth, teacher_file).json()
    ok = client.post("/v1/jobs", headers=auth, json=job_body(good["id"], hyperparameters=TINY_HYPERPARAMETERS,
                                                             budget={"epochs": 1})).json()["id"]
    assert poll_job(client, auth, ok, ("succeeded", "failed", "cancelled"))["status"] == "succeeded"


def test_a_seconds_budget_keeps_what_the_run_derived_measured_and_warned(client, auth, teacher, celery_worker):
    from sqlalchemy import select

    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.models import MeasuredCost

    body = job_body(teacher["id"], students=[{"architecture": "resnet8", "name": "small"}], preset="balanced",
                    budget="20s", hyperparameters={"device": "cpu"})
    created = client.post("/v1/jobs", headers=auth, json=body)
    assert created.status_code == 202, created.text
    jid = created.json()["id"]
    assert created.json()["advice"]["basis"] in ("unmeasured", "history")  # before the run: an estimate at most
    job = poll_job(client, auth, jid, ("succeeded", "failed", "cancelled"))
    assert job["status"] == "succeeded", (job["error"], celery_worker.log())

    events = client.get(f"/v1/jobs/{jid}/events?limit=1000", headers=auth).json()["data"]
    sizings = [e["data"] for e in events if e["kind"] == "sizing"]
    # One at the start; one more when the run got through its first full epoch (the KD steps measured again).
    assert len([s for s in sizings if "calibrated" not in s]) == 1 and len(sizings) <= 2
    sizing = sizings[-1]
    # The stored config is the run's effective one: the KD steps it derived from the budget.
    assert job["config"] == sizing["config"]
    assert job["config"]["kd_steps"] == sizing["derived"]["kd_steps"] == job["report"]["config"]["kd_steps"]
    assert job["config"]["pinned"] == [] and job["config"]["auto_size"] is True
    # The advice is the run's own measurement, and every warning of the run is on the job.
    advice = job["advice"]
    assert advice["basis"] == "run" and advice["message"] == sizing["message"]
    assert advice["device"].startswith("cpu (") and advice["message"].startswith(f"on {advice['device']} ")
    assert set(sizing["warnings"]) <= set(job["warnings"]) and set(job["report"]["warnings"]) <= set(job["warnings"])
    assert len(job["warnings"]) == len(set(job["warnings"]))
    student = job["students"][0]
    reported = job["report"]["students"]["small"]
    assert student["metrics"]["kd_updates"] == reported["kd_updates"] > 0
    assert student["flag"] == student["metrics"]["flag"] == reported["flag"]
    assert student["metrics"]["teacher_agreement"] == reported["teacher_agreement"]
    if student["flag"]:
        assert student["flag"] in job["warnings"]

    # The costs it measured, kept for the advice on later jobs on this device.
    with session_scope() as s:
        rows = s.scalars(select(MeasuredCost).where(MeasuredCost.job_id == jid)).all()
        stored = {(r.role, r.architecture): (r.device, r.input_shape, r.batch_size, r.ms) for r in rows}
    generator = f"generator:{job['config']['generator_width']}x{job['config']['latent_dim']}"
    assert set(stored) == {("kd", "resnet8"), ("synthesis", "resnet8"), ("teacher_forward", "resnet8"),
                           ("synthesis_teacher", "resnet8"), ("synthesis_generator", generator)}
    assert {v[:2] for v in stored.values()} == {(advice["device"], "1x8x8")}
    assert stored[("kd", "resnet8")][2:] == (sizing["measured_ms"]["kd_batch_size"], sizing["measured_ms"]["kd"]["small"])
    later = client.post("/v1/jobs", headers=auth, json=body).json()
    client.post(f"/v1/jobs/{later['id']}/cancel", headers=auth)
    assert later["advice"]["basis"] == "history" and later["advice"]["device"] == advice["device"]
