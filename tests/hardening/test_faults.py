"""Faults with real processes: a private PostgreSQL and Redis (restartable), the API under
uvicorn, Celery workers, and storage on a small tmpfs (a real ENOSPC).

The tests share one stack and run in file order; each leaves it healthy for the next:
failing step (injected OOM) → SIGKILL + redelivery → PostgreSQL restart → Redis restart →
disk full → API killed mid-upload.

A fault "mid-job" happens while the job is held at a checkpoint by the workers' test pause
point (``PausePoint``; ``dfmscd_service.worker.faults``), never while it merely "should still be
running": no test here depends on how fast a job runs. Waits have generous bounds that only
end a broken run; they assert nothing about speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import torch
from faultkit import (
    ROOT,
    ApiProcess,
    PausePoint,
    PrivatePostgres,
    PrivateRedis,
    WorkerProcess,
    api_json,
    mount_tmpfs,
    temp_files,
    unmount,
    wait_for,
)
from service_kit import CARD, TINY_HYPERPARAMETERS, service_env

from benchmarks.data import load_digits_dataset
from benchmarks.teacher import get_teacher
from benchmarks.train import accuracy

from dfmscd.io import load_model

TERMINAL = ("succeeded", "failed", "cancelled")
STORAGE_TMPFS_BYTES = 24 * 1024 * 1024
RESCUE_QUEUE = "distill-rescue"


@dataclass
class Stack:
    pg: PrivatePostgres
    redis: PrivateRedis
    data_dir: Path
    env: dict[str, str]
    api: ApiProcess
    http: httpx.Client
    logs: Path
    pause: PausePoint
    workers: list[WorkerProcess] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    digits: Any = None  # the benchmark task (scikit-learn digits split), to score students on

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage"

    def worker(self, tag: str, queue: str = "distill") -> WorkerProcess:
        env = {**self.env, "DFMSCD_QUEUE_NAME": queue}
        if queue == RESCUE_QUEUE:
            # The rescuer's sweep re-sends orphans (lease expired) to its queue, but never a job
            # that is merely queued: that one belongs to the first worker, however long that
            # worker takes to start its next child (a shorter delay once let the rescuer take
            # the OOM test's next job when a start-up under load took 7.4 s).
            env["DFMSCD_REQUEUE_QUEUED_AFTER_SECONDS"] = "3600"
        w = WorkerProcess(env, self.logs / f"worker-{tag}-{secrets.token_hex(2)}.log")
        self.workers.append(w)
        return w

    def teacher_key(self, teacher_id: str | None = None) -> str:
        """The storage key of a teacher's weights (the one file under ``teachers/<id>/``)."""
        [path] = [p for p in (self.storage / "teachers" / (teacher_id or self.teacher["id"])).iterdir() if p.is_file()]
        return str(path.relative_to(self.storage))

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def all_worker_logs(self) -> str:
        return "".join(w.log_path.read_text(errors="replace") for w in self.workers)

    # --- API helpers (tolerant of a server that is restarting) ---
    def job(self, jid: str) -> dict[str, Any] | None:
        try:
            r = self.http.get(f"/v1/jobs/{jid}")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def submit(self, epochs: int, students: list[dict[str, Any]] | None = None, pause_at: int | None = None) -> str:
        """A job; ``pause_at``: held after its checkpoint at that epoch until ``pause.release``."""
        body = {"teacher_id": self.teacher["id"], "students": students or [{"architecture": "resnet8"}],
                "preset": "fast", "budget": {"epochs": epochs}, "hyperparameters": TINY_HYPERPARAMETERS,
                "metadata": {} if pause_at is None else PausePoint.metadata(pause_at)}
        return api_json(self.http, "POST", "/v1/jobs", json=body)["id"]

    def wait_terminal(self, jid: str, timeout: float = 600) -> dict[str, Any]:
        return wait_for(lambda: (j := self.job(jid)) is not None and j["status"] in TERMINAL and j,
                        timeout, 0.2, what=f"job {jid} to finish")

    def wait_held(self, jid: str, epoch: int) -> None:
        """Until the job sits at its pause point, right after its checkpoint at ``epoch``."""
        held = self.pause.wait_paused(jid, lambda: (j := self.job(jid)) and j["status"])
        assert held["epoch"] == epoch, held
        checkpoints = [e["epoch"] for e in self.events(jid) if e["kind"] == "checkpoint"]
        assert checkpoints and checkpoints[-1] == epoch, checkpoints  # recorded before the hold

    def events(self, jid: str) -> list[dict[str, Any]]:
        return api_json(self.http, "GET", f"/v1/jobs/{jid}/events?limit=1000")["data"]

    def student_file(self, jid: str, name: str, dest: Path) -> Path:
        r = self.http.get(f"/v1/jobs/{jid}/students/{name}/weights")
        assert r.status_code == 200, r.text
        dest.write_bytes(r.content)
        return dest


def _create_key(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "dfmscd_service.cli", "keys-create", "--name", "faults"], cwd=ROOT,
                         env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    t_start = time.monotonic()
    logs = tmp_path_factory.mktemp("fault-logs")
    pg, redis = PrivatePostgres(), PrivateRedis()
    data_dir = Path(tempfile.mkdtemp(prefix="dfmscd-faults-data-"))
    mounted = mount_tmpfs(data_dir / "storage", STORAGE_TMPFS_BYTES)
    api = None
    stack: Stack | None = None
    workers: list[WorkerProcess] = []
    try:
        pg.start()
        redis.start()
        pause = PausePoint(logs / "pause")  # shared by every worker of the stack: a job is held once
        env = service_env(data_dir, pg.url, "", DFMSCD_BROKER_URL=redis.url, DFMSCD_QUEUE_NAME="distill",
                          **pause.env,
                          # A message lost with Redis comes back after 5 s. The first worker's sweep
                          # re-sends to its own queue, so an early re-send of a message it already
                          # holds is only a duplicate it refuses (the rescuer never re-sends these).
                          DFMSCD_REQUEUE_QUEUED_AFTER_SECONDS="5",
                          DFMSCD_STALE_TEMP_SECONDS="1",
                          DFMSCD_FAULT_INJECT="oom_at_epoch:1:once")
        api = ApiProcess(env, logs / "api.log").launch()
        stack = Stack(pg, redis, data_dir, env, api, httpx.Client(base_url=api.base_url, timeout=30), logs, pause)
        stack.reference["tmpfs"] = mounted
        stack.worker("first").launch()
        # The rescuer consumes another queue (its orphan sweep re-sends there), so that the API's
        # jobs go to the first worker only and each test knows which worker runs what.
        stack.worker("rescuer", queue=RESCUE_QUEUE).launch()
        workers = stack.workers
        api.wait_ready()
        stack.http.headers["Authorization"] = f"Bearer {_create_key(env)}"
        # A real teacher for the benchmark task (resnet8 on digits, ~10 s to train) so that the
        # students of a job that went through a fault can be scored against chance.
        stack.digits = load_digits_dataset(0)
        _model, _card, meta, paths = get_teacher(stack.digits, "resnet8", 15, 0, torch.device("cpu"),
                                                 cache_dir=logs / "teacher", log=lambda *_: None)
        stack.reference["teacher_test_accuracy"] = meta["test_accuracy"]
        with open(paths["weights"], "rb") as fh:
            r = stack.http.post("/v1/teachers", files={"file": ("t.safetensors", fh, "application/octet-stream")},
                                data={"card": paths["card"].read_text()})
        assert r.status_code == 201, r.text
        stack.teacher = r.json()
        for w in stack.workers:
            w.wait_ready()
        stack.reference["stack_start_s"] = time.monotonic() - t_start
        yield stack
        figures = os.environ.get("DFMSCD_FAULT_FIGURES")  # where to write the measured durations
        if figures:
            Path(figures).write_text(json.dumps({k: v for k, v in stack.reference.items() if k != "shapes"}, indent=1))
    finally:
        if stack is not None:
            stack.pause.release_all()
        for w in workers:
            w.stop()
        if api is not None:
            api.stop()
        redis.close()
        pg.close()
        unmount(data_dir / "storage")
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)


def _assert_job_resources_freed(stack: Stack, jid: str) -> None:
    wait_for(lambda: not (stack.data_dir / "jobs" / jid).exists(), 120, 0.1, what="the job's checkpoint dir to go")
    assert not (stack.storage / "jobs" / jid).exists() or not any((stack.storage / "jobs" / jid).rglob("*.safetensors"))
    assert temp_files(stack.storage, stack.data_dir / "tmp") == []


# ----------------------------------------------------------------------------- failing step
def test_failing_step_oom_fails_cleanly_and_worker_takes_next_job(stack: Stack, tmp_path: Path) -> None:
    worker = stack.workers[0]
    t0 = time.monotonic()
    jid = stack.submit(epochs=3)
    job = stack.wait_terminal(jid)
    assert job["status"] == "failed", (job, worker.log())
    assert job["error"]["code"] == "out_of_memory", job["error"]
    assert "out of memory" in job["error"]["message"].lower()
    assert all(s["status"] == "failed" and not s["sha256"] for s in job["students"])
    assert job["finished_at"] and job["attempts"] == 1
    events = stack.events(jid)
    assert any(e["data"].get("message") == "fault injection active for this attempt" for e in events)
    assert events[-1]["data"].get("code") == "out_of_memory"
    _assert_job_resources_freed(stack, jid)
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()
    stack.reference["oom_s"] = time.monotonic() - t0

    # the same worker (the only one) takes the next job, which is also the no-fault reference run
    t1 = time.monotonic()
    ref = stack.submit(epochs=2)
    done = stack.wait_terminal(ref)
    assert done["status"] == "succeeded", (done["error"], worker.log())
    assert worker.full_log().count(f"job {ref}: claimed") == 1
    path = stack.student_file(ref, "resnet8", tmp_path / "ref.safetensors")
    module, _ = load_model(path)
    stack.reference["shapes"] = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    stack.reference["student_bytes"] = path.stat().st_size
    stack.reference["ref_s"] = time.monotonic() - t1


# ----------------------------------------------------------------------------- SIGKILL + redelivery
def test_sigkill_mid_job_resumes_once_and_duplicates_are_refused(stack: Stack, tmp_path: Path) -> None:
    first, rescuer = stack.workers[0], stack.workers[1]
    try:
        _sigkill_scenario(stack, first, rescuer, tmp_path)
    finally:  # whatever happened, the next tests get exactly one worker on the API's queue, not held
        stack.pause.release_all()
        rescuer.stop()
        if not stack.live_workers():
            stack.worker("first-restarted").launch()
        for w in stack.live_workers():
            w.wait_ready()
    assert len(stack.live_workers()) == 1


def _sigkill_scenario(stack: Stack, first: WorkerProcess, rescuer: WorkerProcess, tmp_path: Path) -> None:
    from dfmscd_service.core.settings import Settings
    from dfmscd_service.core.broker import TASK_NAME, make_celery

    # 40 epochs for the accuracy check below, not for the timing: the job is held at its epoch-2
    # checkpoint from before the duplicates are sent until the kill.
    jid = stack.submit(epochs=40, pause_at=2)
    stack.wait_held(jid, 2)
    assert f"job {jid}: claimed" in first.full_log()
    # Broker redelivery of the job's message, twice, to the other (idle) worker while attempt 1 holds the lease.
    celery = make_celery(Settings(broker_url=stack.redis.url, broker_key_prefix="", queue_name=RESCUE_QUEUE))
    for _ in range(2):
        celery.send_task(TASK_NAME, args=[jid], queue=RESCUE_QUEUE)
    wait_for(lambda: rescuer.full_log().count(f"job {jid}: not claimable") == 2, 300, 0.1,
             what="the other worker to refuse both duplicates")
    assert stack.pause.is_paused(jid) and stack.job(jid)["status"] == "running"  # still held by attempt 1
    t_kill = time.monotonic()
    first.kill_all()  # SIGKILL the worker's whole process group: main process and the held job's child
    assert stack.job(jid)["status"] == "running"

    def attempt(n: int) -> bool:
        return any(e["data"].get("attempt") == n for e in stack.events(jid))

    # Only the rescuer runs until attempt 2 has begun: its orphan sweep re-sends the job once the
    # lease expires (a restarted first worker could otherwise win that sweep, or lose it, by speed).
    wait_for(lambda: attempt(2), 300, 0.1, what="attempt 2 (the orphan sweep re-sent the job)")
    stack.reference["resume_after_kill_s"] = time.monotonic() - t_kill
    restarted = stack.worker("first-restarted").launch()  # the same worker, restarted, for the next tests
    job = stack.wait_terminal(jid)
    assert job["status"] == "succeeded", (job["error"], rescuer.log())
    assert job["attempts"] == 2 and job["epoch"] == 40

    events = stack.events(jid)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    starts = [(i, e["data"]["attempt"]) for i, e in enumerate(events) if "attempt" in e["data"]]
    assert [a for _, a in starts] == [1, 2], starts
    # Every event is written under the lease, so attempt 1's events all come before attempt 2's
    # claim, and attempt 2 continued from the checkpoint rather than starting over.
    after = events[starts[1][0]:]
    resumed = [e for e in after if e["kind"] == "log" and e["data"]["message"].startswith("resumed from")]
    assert len(resumed) == 1 and resumed[0]["epoch"] == 2  # the checkpoint it was held (and killed) at
    assert not any(e["kind"] == "log" and e["data"]["message"].startswith("distilling into") for e in after)
    from_resume = after[after.index(resumed[0]):]
    assert all(e["epoch"] >= resumed[0]["epoch"] for e in from_resume)
    assert rescuer.full_log().count(f"job {jid}: claimed") == 1 and first.full_log().count(f"job {jid}: claimed") == 1

    module, _ = load_model(stack.student_file(jid, "resnet8", tmp_path / "s.safetensors"))
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == stack.reference["shapes"]
    logits = module(torch.randn(4, 1, 8, 8))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    # It learned through the kill: scored on the digits test split (10 classes, chance 0.10);
    # the same 40-epoch job without a kill scored 0.72 when this test was written.
    acc = accuracy(module, stack.digits, "test", torch.device("cpu"))
    stack.reference["sigkill_student_test_accuracy"] = acc
    assert acc >= 0.3, f"student after SIGKILL + resume: test accuracy {acc:.3f}, chance 0.10"
    assert restarted.proc is not None and restarted.proc.poll() is None


# ----------------------------------------------------------------------------- PostgreSQL restart
def test_postgres_restart_mid_job_job_finishes_not_stuck(stack: Stack) -> None:
    [worker] = stack.live_workers()
    # Held at its epoch-1 checkpoint while the database is away: the job is mid-run (its lease
    # heartbeat failing) however fast it computes; released once the database is back.
    epochs = 3
    jid = stack.submit(epochs=epochs, pause_at=1)
    stack.wait_held(jid, 1)
    offset = len(worker.log_path.read_bytes())
    t0 = time.monotonic()
    stack.pg.stop("fast")  # every connection dropped, server gone

    def renewals_failed() -> int:
        return worker.log_path.read_bytes()[offset:].count(b"lease renewal failed")

    try:
        # down for longer than the 4 s lease: the job's lease expires while the database is away
        wait_for(lambda: renewals_failed() >= 5, 300, 0.1, what="5 failed lease renewals")
    finally:
        stack.pg.start()  # never leave the stack without its database for the tests after this one
        stack.pause.release(jid)
    down_s = time.monotonic() - t0
    job = stack.wait_terminal(jid)
    assert job["status"] in ("succeeded", "failed"), job
    if job["status"] == "failed":
        assert job["error"]["code"] and job["error"]["message"], job
    assert job["status"] == "succeeded", (job["error"], worker.log())
    assert job["epoch"] == epochs and job["progress"] == 1.0
    assert stack.http.get("/readyz").status_code == 200
    stack.reference["pg_down_s"] = down_s
    stack.reference["pg_job_attempts"] = job["attempts"]


# ----------------------------------------------------------------------------- Redis restart
def test_redis_restart_mid_job_running_and_queued_jobs_finish(stack: Stack) -> None:
    [worker] = stack.live_workers()
    # Held at its epoch-1 checkpoint through the restart, so it is mid-run and the only worker
    # is busy whatever the speed; released once Redis is back.
    running = stack.submit(epochs=3, pause_at=1)
    stack.wait_held(running, 1)
    queued = stack.submit(epochs=1)  # one worker, busy with the held job: this message waits in Redis
    assert stack.job(queued)["status"] == "queued"
    t0 = time.monotonic()
    try:
        stack.redis.stop()  # no persistence: the queued message is lost with it
        stack.redis.start()
    finally:
        stack.pause.release(running)
    first = stack.wait_terminal(running)
    second = stack.wait_terminal(queued)
    assert first["status"] == "succeeded", (first["error"], worker.log())
    assert second["status"] == "succeeded", (second["error"], worker.log())
    assert first["attempts"] == 1 and second["attempts"] == 1
    assert first["epoch"] == 3
    stack.reference["redis_recovery_s"] = time.monotonic() - t0
    # the broker connection works again for new jobs
    assert stack.wait_terminal(stack.submit(epochs=1))["status"] == "succeeded"


# ----------------------------------------------------------------------------- disk full
def test_disk_full_during_student_write_fails_cleanly(stack: Stack) -> None:
    if not stack.reference.get("tmpfs"):
        pytest.skip("mounting a tmpfs is not permitted here")
    [worker] = stack.live_workers()
    teacher_path = stack.storage / stack.teacher_key()
    before = hashlib.sha256(teacher_path.read_bytes()).hexdigest()
    assert before == stack.teacher["sha256"]
    size = stack.reference["student_bytes"]
    st = os.statvfs(stack.storage)
    free = st.f_bavail * st.f_frsize
    filler = stack.storage / "filler.bin"
    with open(filler, "wb") as fh:  # leave room for one student file and a half
        fh.write(b"\0" * max(0, free - int(size * 1.5)))
    try:
        jid = stack.submit(epochs=1, students=[{"architecture": "resnet8", "name": "a"},
                                               {"architecture": "resnet8", "name": "b"}])
        job = stack.wait_terminal(jid)
        assert job["status"] == "failed", (job, worker.log())
        assert job["error"]["code"] == "disk_full", job["error"]
        assert "no space left" in job["error"]["message"].lower()
        _assert_job_resources_freed(stack, jid)
        assert hashlib.sha256(teacher_path.read_bytes()).hexdigest() == before
    finally:
        filler.unlink()
    ok = stack.submit(epochs=1)
    assert stack.wait_terminal(ok)["status"] == "succeeded"


# ----------------------------------------------------------------------------- API restart mid-upload
def _multipart_stream(boundary: str, card: dict[str, Any], payload_bytes: int, stall_after: int,
                      release: threading.Event, sent: list[int]) -> Iterator[bytes]:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"card\"\r\n\r\n{json.dumps(card)}\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.safetensors\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    chunk = b"\x01" * 65536
    while sent[0] < payload_bytes:
        if sent[0] >= stall_after:
            release.wait(60)
            return  # the server is gone; stop sending
        yield chunk
        sent[0] += len(chunk)
    yield f"\r\n--{boundary}--\r\n".encode()


def test_api_killed_mid_upload_leaves_nothing_and_keeps_teachers(stack: Stack) -> None:
    tmp_dir = stack.data_dir / "tmp"
    before = api_json(stack.http, "GET", "/v1/teachers?limit=100")["data"]
    boundary = secrets.token_hex(8)
    release, sent, result = threading.Event(), [0], {}

    def upload() -> None:
        try:
            with httpx.Client(base_url=stack.api.base_url, timeout=60, headers=dict(stack.http.headers)) as c:
                result["status"] = c.post(
                    "/v1/teachers", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                    content=_multipart_stream(boundary, CARD, 1_800_000, 640 * 1024, release, sent)).status_code
        except httpx.HTTPError as exc:
            result["error"] = type(exc).__name__

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()

    def partial() -> list[Path]:
        return [p for p in tmp_dir.glob("upload-*.part") if p.stat().st_size >= 256 * 1024]

    wait_for(partial, 300, 0.05, what="a partial upload on disk")
    stack.api.kill()  # SIGKILL mid-upload
    release.set()
    thread.join(60)
    assert "status" not in result or result["status"] >= 400, result
    left = partial()
    assert left, "the crash should have left the partial upload behind"
    # A restarting process removes only temp files untouched for DFMSCD_STALE_TEMP_SECONDS (1 s in
    # this stack), so that it never removes another live process's write. A restart within that
    # second (a fast machine) kept the file: age it as a real outage would, instead of depending on
    # how fast the API restarts.
    long_ago = time.time() - 3600
    for path in left:
        os.utime(path, (long_ago, long_ago))
    stack.api.launch().wait_ready()
    assert temp_files(tmp_dir, stack.storage) == []
    after = api_json(stack.http, "GET", "/v1/teachers?limit=100")["data"]
    assert [t["id"] for t in after] == [t["id"] for t in before]
    for t in after:
        path = stack.storage / stack.teacher_key(t["id"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == t["sha256"]
