"""A worker killed mid-job (SIGKILL, whole process group): a new worker resumes from the checkpoint.

The job is held at its epoch-2 checkpoint (the worker's test pause point) when it is killed, so
the kill lands mid-job however fast the job runs.
"""

from __future__ import annotations

import secrets

import pytest
import torch
from service_kit import TINY_HYPERPARAMETERS, job_body, wait_for
from worker_kit import TERMINAL, WorkerProcess

from dfmscd_service.core.settings import get_settings
from dfmscd.io import load_model


@pytest.fixture
def queues(service, pause_point, monkeypatch):
    """The API sends to queue A (the worker we kill); the rescuer listens on B, where its orphan
    sweep re-sends. Both start together, so the test pays one worker start-up, not two. Both
    (and the session worker, which may resume the job too) share the session's pause point."""
    a, b = f"recovery-a-{secrets.token_hex(4)}", f"recovery-b-{secrets.token_hex(4)}"
    monkeypatch.setenv("DFMSCD_QUEUE_NAME", a)
    get_settings.cache_clear()
    yield {**service, **pause_point.env, "DFMSCD_QUEUE_NAME": a}, {**service, **pause_point.env, "DFMSCD_QUEUE_NAME": b}
    monkeypatch.undo()
    get_settings.cache_clear()


def test_killed_worker_job_resumes_from_checkpoint_and_succeeds(client, auth, teacher, queues, pause_point, tmp_path):
    env_a, env_b = queues
    first = WorkerProcess(env_a, tmp_path / "first.log").launch()
    rescuer = WorkerProcess(env_b, tmp_path / "rescuer.log").launch()
    try:
        first.wait_ready()
        rescuer.wait_ready()
        body = job_body(teacher["id"], hyperparameters=TINY_HYPERPARAMETERS, budget={"epochs": 4},
                        metadata=pause_point.metadata(2))
        jid = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
        try:
            held = pause_point.wait_paused(jid, lambda: client.get(f"/v1/jobs/{jid}", headers=auth).json()["status"])
            assert held["epoch"] == 2
            events = client.get(f"/v1/jobs/{jid}/events?limit=1000", headers=auth).json()["data"]
            assert [e["epoch"] for e in events if e["kind"] == "checkpoint"][-1] == 2, events
            job = client.get(f"/v1/jobs/{jid}", headers=auth).json()
            assert job["status"] == "running" and job["attempts"] == 1, job
        finally:
            first.kill_all()  # SIGKILL: main process and the held job's child, mid-run

        def finished():
            j = client.get(f"/v1/jobs/{jid}", headers=auth).json()
            return j if j["status"] in TERMINAL else None

        # the bound is for a broken run only: the lease (4 s) must expire before a sweep re-sends
        job = wait_for(finished, 600, 0.25, what="the resumed job to finish")
    finally:
        first.stop()
        rescuer.stop()
    assert job["status"] == "succeeded", (job["error"], rescuer.log())
    assert job["attempts"] == 2 and job["epoch"] == 4
    # resumed by the rescuer, or by another worker of this test session whose sweep saw it first
    assert first.full_log().count(f"job {jid}: claimed") == 1
    events = client.get(f"/v1/jobs/{jid}/events?limit=1000", headers=auth).json()["data"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # one writer at a time
    resumed = [e for e in events if e["kind"] == "log" and e["data"]["message"].startswith("resumed from")]
    assert len(resumed) == 1 and resumed[0]["epoch"] == 2  # from the checkpoint it was held at
    # events are shown to the tenant: no server paths in them
    assert all("/" not in str(e["data"]) for e in events), [e["data"] for e in events if "/" in str(e["data"])]
    assert job["report"]["resumed_from_epoch"] == resumed[0]["epoch"]
    data = client.get(f"/v1/jobs/{jid}/students/resnet8/weights", headers=auth).content
    (tmp_path / "r.safetensors").write_bytes(data)
    module, _ = load_model(tmp_path / "r.safetensors")
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_seconds_budget_job_resumes_with_the_config_its_first_start_derived(client, auth, teacher, queues,
                                                                               pause_point, tmp_path):
    # The first start measures its costs, sizes the run and writes the effective config onto the
    # job; the resumed attempt reads that config and must match the checkpoint (derived fields are
    # not part of its fingerprint) and take the same sizing, without measuring again.
    env_a, env_b = queues
    first = WorkerProcess(env_a, tmp_path / "first.log").launch()
    rescuer = WorkerProcess(env_b, tmp_path / "rescuer.log").launch()
    try:
        first.wait_ready()
        rescuer.wait_ready()
        body = job_body(teacher["id"], preset="balanced", budget="30s",
                        hyperparameters={"device": "cpu", "checkpoint_every": 1}, metadata=pause_point.metadata(1))
        jid = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
        try:
            pause_point.wait_paused(jid, lambda: client.get(f"/v1/jobs/{jid}", headers=auth).json()["status"])
            held = client.get(f"/v1/jobs/{jid}", headers=auth).json()
            assert held["advice"]["basis"] == "run"
        finally:
            first.kill_all()

        def finished():
            j = client.get(f"/v1/jobs/{jid}", headers=auth).json()
            return j if j["status"] in TERMINAL else None

        job = wait_for(finished, 600, 0.25, what="the resumed job to finish")
    finally:
        first.stop()
        rescuer.stop()
    assert job["status"] == "succeeded", (job["error"], rescuer.log())
    assert job["attempts"] == 2 and job["report"]["resumed_from_epoch"] == 1
    events = client.get(f"/v1/jobs/{jid}/events?limit=1000", headers=auth).json()["data"]
    sizings = [e["data"] for e in events if e["kind"] == "sizing"]
    # measured once, at the first start (and the KD steps again after the first full epoch, at most once)
    assert len([s for s in sizings if "calibrated" not in s]) == 1 and len(sizings) <= 2
    sizing = sizings[-1]
    assert held["config"] == sizings[0]["config"] and job["config"] == sizing["config"]
    assert job["report"]["config"]["kd_steps"] == sizing["config"]["kd_steps"]
    assert job["report"]["sizing"]["budget_values"] == sizing["budget_values"]
    assert job["advice"]["message"] == sizing["message"]
