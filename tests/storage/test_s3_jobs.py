"""Jobs with S3 storage and real Celery workers whose data directories are empty and shared
with nobody (not with the API, not with each other): the bucket, the database and the broker
are all they share. A job completes; a job whose worker is SIGKILLed after a checkpoint resumes
on another worker from the checkpoint in the bucket; a bucket that goes away mid-job ends the
job ``failed`` (storage_unavailable) with no result recorded.

The kill and the outage happen while the job is held at its epoch-1 checkpoint by the worker's
test pause point (worker/faults.py), so they land mid-job however fast the job runs. The worker
uploads a checkpoint before it records its event (worker/checkpoint_mirror.py), so by then the
bucket holds it. All workers (and the private server of the outage test) start together once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
from pathlib import Path

import pytest
import torch
from s3_kit import MotoServer, object_names, open_uploads
from service_kit import (
    TINY_HYPERPARAMETERS,
    assert_error,
    job_body,
    make_key,
    upload_evaluation_set,
    upload_teacher,
    wait_for,
    write_evaluation_npz,
)
from worker_kit import WorkerProcess

from dfmscd.io import load_model
from dfmscd_service.core.settings import get_settings

TERMINAL = ("succeeded", "failed", "cancelled")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


class Stack:
    """The in-process API and its env on one bucket prefix; workers get their own empty data dirs."""

    def __init__(self, service: dict[str, str], moto: MotoServer, bucket: str, tmp: Path) -> None:
        self.prefix = f"jobs-{secrets.token_hex(3)}"
        self.s3, self.bucket, self.tmp = moto.client(), bucket, tmp
        self.env = {**service, **moto.env(bucket, self.prefix)}

    def worker_env(self, queue: str, name: str) -> dict[str, str]:
        data_dir = self.tmp / f"{name}-data"
        data_dir.mkdir()
        return {**self.env, "DFMSCD_DATA_DIR": str(data_dir), "DFMSCD_QUEUE_NAME": queue}

    def objects(self, under: str = "") -> list[str]:
        return [n.removeprefix(self.prefix + "/") for n in object_names(self.s3, self.bucket, f"{self.prefix}/{under}")]


def _use_api_env(mp: pytest.MonkeyPatch, env: dict[str, str], queue: str) -> None:
    for k, v in {**env, "DFMSCD_QUEUE_NAME": queue}.items():
        if k != "DFMSCD_DATA_DIR":  # the API keeps its own data dir
            mp.setenv(k, v)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def stack(service, client, moto_s3, s3_bucket, pause_point, tmp_path_factory):
    """Three workers, each with its own empty data dir and queue, launched together: ``worker``
    (the main one, which also rescues), ``victim`` (SIGKILLed) and ``outage`` (on ``private``,
    a moto server of its own that the outage test stops)."""
    st = Stack({**service, **pause_point.env}, moto_s3, s3_bucket, tmp_path_factory.mktemp("s3jobs"))
    st.private = MotoServer(st.tmp / "moto-private.log").start()
    st.private_env = {**st.env, **st.private.env(st.private.new_bucket(), "outage")}
    st.queue, st.victim_queue, st.outage_queue = (f"s3-{n}-{secrets.token_hex(3)}" for n in ("main", "victim", "outage"))
    main_env = st.worker_env(st.queue, "main")
    st.worker_dir = Path(main_env["DFMSCD_DATA_DIR"])
    st.worker = WorkerProcess(main_env, st.tmp / "main-worker.log").launch()
    # Only the main worker sweeps: another's sweep could take the killed job to its own queue.
    no_sweep = {"DFMSCD_SWEEP_SECONDS": "86400"}
    st.victim = WorkerProcess({**st.worker_env(st.victim_queue, "victim"), **no_sweep}, st.tmp / "victim.log").launch()
    outage_env = {**st.private_env, **no_sweep, "DFMSCD_QUEUE_NAME": st.outage_queue}
    outage_env["DFMSCD_DATA_DIR"] = st.worker_env(st.outage_queue, "outage")["DFMSCD_DATA_DIR"]
    st.outage_dir = Path(outage_env["DFMSCD_DATA_DIR"])
    st.outage = WorkerProcess(outage_env, st.tmp / "outage-worker.log").launch()
    mp = pytest.MonkeyPatch()
    _use_api_env(mp, st.env, st.queue)
    try:
        for w in (st.worker, st.victim, st.outage):
            w.wait_ready()
        st.auth = {"Authorization": f"Bearer {make_key('s3-jobs')}"}
        yield st
    finally:
        mp.undo()
        get_settings.cache_clear()
        pause_point.release_all()
        workers = [w for w in (st.worker, st.victim, st.outage) if w.proc is not None and w.proc.poll() is None]
        for w in workers:  # all told at once, then each awaited (stop() SIGKILLs one that lingers)
            os.killpg(w.proc.pid, signal.SIGTERM)
        for w in workers:
            w.stop()
        st.private.stop()


@pytest.fixture(scope="module")
def s3_teacher(client, stack, teacher_file):
    r = upload_teacher(client, stack.auth, teacher_file)
    assert r.status_code == 201, r.text
    return r.json()


def _events(client, auth, jid):
    return client.get(f"/v1/jobs/{jid}/events?limit=1000", headers=auth).json()["data"]


def _wait_finished(client, auth, jid, timeout=300):
    def done():
        j = client.get(f"/v1/jobs/{jid}", headers=auth).json()
        return j if j["status"] in TERMINAL else None

    return wait_for(done, timeout, 0.25, what=f"job {jid} to finish")


def _wait_checkpoint_recorded(client, auth, jid):
    def checkpointed():
        return [e for e in _events(client, auth, jid) if e["kind"] == "checkpoint" and e["epoch"] >= 1]

    return wait_for(checkpointed, 240, 0.1, what=f"a checkpoint event of {jid}")[-1]


def test_job_with_s3_storage_on_a_worker_with_an_empty_private_data_dir(client, stack, s3_teacher, tmp_path):
    # An evaluation set streamed into the bucket, evaluated by the worker from it at the job's end.
    evaluation_set = upload_evaluation_set(client, stack.auth, write_evaluation_npz(tmp_path / "test.npz", n=20),
                                           s3_teacher["id"])
    assert evaluation_set.status_code == 201, evaluation_set.text
    set_id = evaluation_set.json()["id"]
    assert stack.objects(f"evaluation-sets/{set_id}/") == [f"evaluation-sets/{set_id}/data.npz"]
    jid = client.post("/v1/jobs", headers=stack.auth, json=job_body(s3_teacher["id"], preset="fast", budget={"epochs": 2},
                                                                    evaluation_set_id=set_id)).json()["id"]
    job = _wait_finished(client, stack.auth, jid)
    assert job["status"] == "succeeded", (job["error"], stack.worker.log())
    assert job["epoch"] == 2 and job["attempts"] == 1
    student = job["students"][0]
    r = client.get(f"/v1/jobs/{jid}/students/{student['name']}/weights", headers=stack.auth)
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == student["sha256"]
    (tmp_path / "s.safetensors").write_bytes(r.content)
    module, card = load_model(tmp_path / "s.safetensors")
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    png = client.get(f"/v1/jobs/{jid}/samples.png", headers=stack.auth)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    # results live in the bucket; the checkpoint was removed with the job's scratch
    names = stack.objects(f"jobs/{jid}/")
    assert f"jobs/{jid}/checkpoint.pt" not in names
    stored = {n.rsplit("/", 1)[-1].split(".", 2)[-1] for n in names if n.startswith(f"jobs/{jid}/students/")}
    assert stored == {"safetensors", "onnx", "torchscript.pt", "int8.onnx"}  # every format, in the bucket
    assert len([n for n in names if n.startswith(f"jobs/{jid}/calibration.") and n.endswith(".npz")]) == 1
    detail = client.get(f"/v1/jobs/{jid}/students/{student['name']}", headers=stack.auth).json()
    for f in detail["files"]:
        got = client.get(f["download_url"], headers=stack.auth)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == f["sha256"], f["format"]
    [evaluation] = client.get(f"/v1/jobs/{jid}/evaluations", headers=stack.auth).json()["data"]
    assert evaluation["status"] == "succeeded", evaluation
    assert set(evaluation["results"]["students"][student["name"]]["accuracy"]) == {
        "pytorch", "safetensors", "onnx", "torchscript", "onnx-int8"}
    assert open_uploads(stack.s3, stack.bucket, stack.prefix) == []
    # the worker kept nothing on its own disk, and wrote nothing to the API's
    assert [p for p in _files(stack.worker_dir) if "storage" in p.parts or "jobs" in p.parts] == []
    assert not get_settings().job_dir(jid).exists() and _files(get_settings().storage_dir) == []
    # Deleting the job and the set empties their folders in the bucket.
    assert client.delete(f"/v1/jobs/{jid}", headers=stack.auth).status_code == 204
    assert client.delete(f"/v1/evaluation-sets/{set_id}", headers=stack.auth).status_code == 204
    assert stack.objects(f"jobs/{jid}/") == [] and stack.objects(f"evaluation-sets/{set_id}/") == []


def test_killed_worker_job_resumes_on_another_host_from_the_bucket(client, stack, s3_teacher, pause_point, tmp_path):
    mp = pytest.MonkeyPatch()
    _use_api_env(mp, stack.env, stack.victim_queue)  # this job goes to the victim
    try:
        body = job_body(s3_teacher["id"], hyperparameters=TINY_HYPERPARAMETERS, budget={"epochs": 3},
                        metadata=pause_point.metadata(1))
        jid = client.post("/v1/jobs", headers=stack.auth, json=body).json()["id"]
    finally:
        mp.undo()
        get_settings.cache_clear()
    try:
        held = pause_point.wait_paused(jid, lambda: client.get(f"/v1/jobs/{jid}", headers=stack.auth).json()["status"])
        assert held["epoch"] == 1
        assert f"jobs/{jid}/checkpoint.pt" in stack.objects(f"jobs/{jid}/")  # uploaded before it was recorded
        job = client.get(f"/v1/jobs/{jid}", headers=stack.auth).json()
        assert job["status"] == "running" and job["attempts"] == 1, job
    finally:
        stack.victim.kill_all()  # SIGKILL, whole process group: a host gone mid-job
    # the lease expires; the main worker's sweep re-sends the job to its own queue; it resumes
    # with an empty data dir: teacher and checkpoint come from the bucket
    job = _wait_finished(client, stack.auth, jid, timeout=600)  # the bound is for a broken run only
    assert job["status"] == "succeeded", (job["error"], stack.worker.log())
    assert job["attempts"] == 2 and job["epoch"] == 3
    assert stack.victim.full_log().count(f"job {jid}: claimed") == 1
    assert stack.worker.full_log().count(f"job {jid}: claimed") == 1
    events = _events(client, stack.auth, jid)
    resumed = [e for e in events if e["kind"] == "log" and e["data"]["message"].startswith("resumed from")]
    assert len(resumed) == 1 and resumed[0]["epoch"] == 1, resumed  # the checkpoint it was held at
    assert job["report"]["resumed_from_epoch"] == 1
    assert f"jobs/{jid}/checkpoint.pt" not in stack.objects(f"jobs/{jid}/")
    assert not (stack.worker_dir / "jobs" / jid).exists()
    data = client.get(f"/v1/jobs/{jid}/students/resnet8/weights", headers=stack.auth).content
    (tmp_path / "r.safetensors").write_bytes(data)
    module, _ = load_model(tmp_path / "r.safetensors")
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_bucket_gone_mid_job_fails_it_cleanly(client, stack, teacher_file, pause_point):
    mp = pytest.MonkeyPatch()
    _use_api_env(mp, stack.private_env, stack.outage_queue)  # API and outage worker on the private server
    try:
        teacher = upload_teacher(client, stack.auth, teacher_file).json()
        body = job_body(teacher["id"], hyperparameters=TINY_HYPERPARAMETERS, budget={"epochs": 3},
                        metadata=pause_point.metadata(1))
        jid = client.post("/v1/jobs", headers=stack.auth, json=body).json()["id"]
        pause_point.wait_paused(jid, lambda: client.get(f"/v1/jobs/{jid}", headers=stack.auth).json()["status"])
        stack.private.stop()  # the bucket is gone; the epoch-2 checkpoint upload cannot reach it
        pause_point.release(jid)
        job = _wait_finished(client, stack.auth, jid, timeout=600)  # the bound is for a broken run only
        assert job["status"] == "failed", (job, stack.outage.log())
        assert job["error"]["code"] == "storage_unavailable", job["error"]
        assert "127.0.0.1" not in job["error"]["message"]  # the endpoint stays in the worker log
        assert all(s["status"] == "failed" and s["sha256"] is None for s in job["students"]), job["students"]
        assert_error(client.get(f"/v1/jobs/{jid}/students/resnet8/weights", headers=stack.auth), 404, "not_ready")
        assert _events(client, stack.auth, jid)[-1]["data"]["code"] == "storage_unavailable"
        assert not (stack.outage_dir / "jobs" / jid).exists()  # scratch freed, nothing half-kept
        assert stack.outage.proc is not None and stack.outage.proc.poll() is None  # the worker goes on
    finally:
        mp.undo()
        get_settings.cache_clear()
