"""Runs one claimed job in the worker's child process: teacher → Distiller → stored students.

Only this module imports torch and the engine, and only inside the child that Celery forks
for the task, so CUDA is initialised there and nowhere else. Every write that changes the
job's outcome is conditional on still holding the lease.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from sqlalchemy import delete, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dfmscd.config import Budget, DistillConfig
from dfmscd.engine import Distiller, StudentSpec
from dfmscd.errors import CardError, CheckpointError, ConfigError, DfmscdError
from dfmscd.io import ModelCard, load_teacher
from dfmscd.formats import MODEL_FORMATS
from dfmscd.outputs import run_outputs
from dfmscd_service.core.db import session_factory
from dfmscd_service.core.measured_costs import architecture_key, merge_warnings
from dfmscd_service.core.models import (
    Evaluation,
    EvaluationSet,
    Job,
    JobStatus,
    JobStudent,
    StudentFile,
    Teacher,
    new_id,
    utcnow,
)
from dfmscd_service.core.settings import Settings, get_settings
from dfmscd_service.core.storage import get_storage
from dfmscd_service.core.storage_base import (
    Storage,
    StorageError,
    StorageUnavailable,
    local_copy,
    samples_key,
    student_key,
)
from dfmscd_service.core.webhooks import record_job_event
from dfmscd_service.worker.checkpoint_mirror import CheckpointMirror, discard_stored_checkpoint
from dfmscd_service.worker.deliverables import Deliverables, deliver
from dfmscd_service.worker.faults import ENV_VAR as FAULT_ENV_VAR
from dfmscd_service.worker.faults import fault_callback, pause_callback
from dfmscd_service.worker.lease import claim, new_lease_owner, renew, still_owner
from dfmscd_service.worker.recorder import CostKeys, EventRecorder, LeaseLost, _jsonable

log = logging.getLogger("dfmscd.worker")


class Heartbeat(threading.Thread):
    """Renews the lease every ``heartbeat_seconds``; notices when it has been taken away."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, owner: str, settings: Settings) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.sessions, self.job_id, self.owner, self.settings = sessions, job_id, owner, settings
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_seconds):
            try:
                with self.sessions() as s:
                    if not renew(s, self.job_id, self.owner, self.settings.lease_seconds):
                        self.lost = True
                        log.warning("job %s: lease lost to another worker", self.job_id)
                        return
            except OperationalError as exc:  # DB restarting: keep trying until the lease would expire
                log.warning("job %s: lease renewal failed: %s", self.job_id, str(exc).splitlines()[0])

    def stop(self) -> None:
        self.stopped.set()


class CancelPoll:
    """``should_cancel`` for the Distiller: reads the job's status at most every ``interval`` s.

    The Distiller asks before every step and stops at the first True, so the work done after a
    cancel request is the steps it was allowed to start after the request was committed. This
    poll counts them (answers of False given after ``cancel_requested_at``) so the job's events
    can say how promptly it stopped; ``interval`` 0 reads the database before every step.
    """

    def __init__(self, sessions: sessionmaker[Session], job_id: str, owner: str, interval: float, hb: Heartbeat) -> None:
        self.sessions, self.job_id, self.owner, self.interval, self.hb = sessions, job_id, owner, interval, hb
        self._last = float("-inf")
        self._answer = False
        self.lease_lost = False
        self._allowed_at: deque[float] = deque(maxlen=100_000)  # wall times of the recent False answers
        self.cancel_requested_at: datetime | None = None
        self.steps_after_request: int | None = None  # set when a cancel request is first seen
        self.seen_after_s: float | None = None

    def __call__(self) -> bool:
        if self.hb.lost:
            self.lease_lost = True
            return True
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._poll()
        if not self._answer:
            self._allowed_at.append(time.time())
        return self._answer

    def _poll(self) -> None:
        try:
            with self.sessions() as s:
                owner_ok, status, requested_at = still_owner(s, self.job_id, self.owner)
        except OperationalError:
            return
        if not owner_ok:
            self.lease_lost = True
        self._answer = (not owner_ok) or status == JobStatus.CANCELLING
        if status == JobStatus.CANCELLING and self.steps_after_request is None:
            self.cancel_requested_at = requested_at
            if requested_at is not None:
                t = requested_at.timestamp() if requested_at.tzinfo else requested_at.replace(tzinfo=timezone.utc).timestamp()
                self.steps_after_request = sum(1 for a in self._allowed_at if a > t)
                self.seen_after_s = max(0.0, time.time() - t)
            else:
                self.steps_after_request = 0


@dataclass
class JobFailure(Exception):
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)


def classify(exc: BaseException) -> tuple[str, str]:
    """(code, one-line message) for a failed job."""
    first = (str(exc).splitlines() or [""])[0][:500]
    if isinstance(exc, JobFailure):
        return exc.code, exc.message
    if isinstance(exc, CheckpointError):
        return "invalid_checkpoint", first
    if isinstance(exc, CardError):
        return "invalid_card", first
    if isinstance(exc, ConfigError):
        return "invalid_config", first
    if isinstance(exc, DfmscdError):
        return "invalid_input", first
    if isinstance(exc, StorageUnavailable):
        return "storage_unavailable", f"object storage unavailable; nothing of this attempt was kept: {first}"
    if isinstance(exc, StorageError):
        return "storage_error", first
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full", f"no space left on device while writing results: {first}"
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in first.lower():
        return "out_of_memory", f"{type(exc).__name__}: {first}"
    return "internal_error", f"{type(exc).__name__}: {first}"


def _retry_db(fn: Callable[[], Any], attempts: int = 30, delay: float = 1.0) -> Any:
    """Final writes survive a database restart: retry on connection errors for ~attempts*delay s."""
    for i in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            if i == attempts - 1:
                raise
            log.warning("database unavailable (%s); retrying", str(exc).splitlines()[0])
            time.sleep(delay)  # backoff between retries, not synchronisation


class JobRun:
    def __init__(self, job_id: str, owner: str, settings: Settings, storage: Storage,
                 sessions: sessionmaker[Session]) -> None:
        self.job_id, self.owner, self.settings, self.storage, self.sessions = job_id, owner, settings, storage, sessions
        self.token = uuid.uuid4().hex[:8]  # per attempt: a lost-lease runner never overwrites a winner's files
        self.written: list[str] = []

    # --- outcome writes (all conditional on the lease) ---
    def _finish(self, status: str, students: dict[str, dict[str, Any]], add_warnings: Sequence[str] = (),
                files: dict[str, list[dict[str, Any]]] | None = None, evaluation: dict[str, Any] | None = None,
                **job_values: Any) -> None:
        """The outcome in one transaction under the lease; ``add_warnings`` join the job's warnings,
        ``files`` (student -> ``StudentFile`` values) replace the students' files, ``evaluation``
        (``Evaluation`` values) is the job-end evaluation."""
        def tx() -> None:
            with self.sessions() as s:
                now = utcnow()
                if add_warnings:
                    current = s.scalar(select(Job.warnings).where(Job.id == self.job_id))
                    job_values["warnings"] = merge_warnings(current, add_warnings)
                res = s.execute(
                    update(Job)
                    .where(Job.id == self.job_id, Job.lease_owner == self.owner)
                    .values(status=status, lease_owner=None, lease_expires_at=None, finished_at=now,
                            updated_at=now, eta_seconds=0.0 if status == JobStatus.SUCCEEDED else None, **job_values)
                )
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    s.rollback()
                    raise LeaseLost(self.job_id)
                for name, values in students.items():
                    s.execute(update(JobStudent).where(JobStudent.job_id == self.job_id, JobStudent.name == name)
                              .values(**values))
                for name, rows in (files or {}).items():
                    student_id = s.scalar(select(JobStudent.id).where(JobStudent.job_id == self.job_id,
                                                                      JobStudent.name == name))
                    s.execute(delete(StudentFile).where(StudentFile.student_id == student_id))
                    s.add_all([StudentFile(student_id=student_id, created_at=now, **row) for row in rows])
                if evaluation is not None:
                    s.add(Evaluation(job_id=self.job_id, created_at=now, started_at=now, finished_at=now, **evaluation))
                record_job_event(s, self.job_id, f"job.{status}")  # the outbox: same transaction
                s.commit()

        _retry_db(tx)

    def fail(self, code: str, message: str) -> None:
        with self.sessions() as s:
            names = [n for (n,) in s.query(JobStudent.name).filter(JobStudent.job_id == self.job_id)]
        self._finish(JobStatus.FAILED, {n: {"status": JobStatus.FAILED} for n in names}, error_code=code, error_message=message)

    def discard_files(self) -> None:
        """Best effort: remove this attempt's results (storage may be the reason it failed)."""
        for key in self.written:
            try:
                self.storage.delete(key)
            except Exception as exc:  # noqa: BLE001 - the job's own failure is what gets recorded
                log.warning("job %s: could not delete %s: %s", self.job_id, key, exc)

    def clean_scratch(self) -> None:
        """The job is over: its checkpoint (local, and in remote storage) is not needed again."""
        shutil.rmtree(self.settings.job_dir(self.job_id), ignore_errors=True)
        if self.storage.remote:
            discard_stored_checkpoint(self.storage, self.job_id)

    def _load_teacher(self, key: str, card: ModelCard, job_dir: Path) -> Any:
        """The teacher module, read from storage (a temp copy in the job's scratch when remote)."""
        if not self.storage.exists(key):
            raise JobFailure("teacher_missing", "the teacher's weights file is missing from storage")
        with local_copy(self.storage, key, job_dir, "." + key.rsplit(".", 1)[-1]) as weights:
            return load_teacher(weights, card, max_bytes=max(self.settings.max_upload_bytes, 1))

    # --- the run ---
    def execute(self, recorder: EventRecorder, should_cancel: CancelPoll) -> str:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        with self.sessions() as s:
            job = s.get(Job, self.job_id)
            assert job is not None
            teacher = s.get(Teacher, job.teacher_id) if job.teacher_id else None
            specs = [StudentSpec(st.architecture, st.name, dict(st.arch_kwargs or {})) for st in job.students]
            student_keys = {st.name: architecture_key(st.architecture, st.arch_kwargs) for st in job.students}
            config = DistillConfig.model_validate(job.config)
            budget = Budget.model_validate(job.budget)
            status_at_start = job.status
            metadata = dict(job.job_metadata or {})
            owner_id = job.owner_id
            evaluation_set = s.get(EvaluationSet, job.evaluation_set_id) if job.evaluation_set_id else None
            named_set = job.evaluation_set_id
        if teacher is None:
            raise JobFailure("teacher_missing", "the job's teacher was deleted")
        card = ModelCard.model_validate(teacher.card)
        recorder.cost_keys = CostKeys(student_keys, architecture_key(card.architecture, card.arch_kwargs), card.input_shape)
        job_dir = self.settings.job_dir(self.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        teacher_model = self._load_teacher(teacher.storage_key, card, job_dir)
        # Remote storage: the last stored checkpoint is fetched, and each new one uploaded
        # before its event is recorded (first callback), so any host can resume the job.
        mirror = CheckpointMirror.for_run(self.storage, self.job_id, job_dir / "checkpoint.pt",
                                          lambda: should_cancel.hb.lost)
        if status_at_start == JobStatus.CANCELLING:
            recorder.log("cancel requested before this attempt started")
        callbacks: list[Callable[[Any], None]] = [recorder] if mirror is None else [mirror, recorder]
        injected = fault_callback(self.job_id, self.settings.data_dir)  # tests only; None unless configured
        if injected is not None:
            recorder.log("fault injection active for this attempt", fault=os.environ.get(FAULT_ENV_VAR, ""))
            callbacks.append(injected)
        paused = pause_callback(self.job_id, metadata)  # tests only; None unless DFMSCD_TEST_PAUSE_DIR is set
        if paused is not None:
            callbacks.append(paused)  # after the recorder: the checkpoint event is written before the hold
        distiller = Distiller(
            teacher_model, card, specs, config, budget,
            callbacks=callbacks, should_cancel=should_cancel, checkpoint_path=job_dir / "checkpoint.pt",
        )
        result = distiller.run(resume=True)
        recorder.flush()
        if should_cancel.lease_lost or recorder.lost:
            raise LeaseLost(self.job_id)

        partial = result.status != "completed"
        with self.sessions() as s:
            if not renew(s, self.job_id, self.owner, self.settings.lease_seconds):
                raise LeaseLost(self.job_id)
        students: dict[str, dict[str, Any]] = {}
        report_students = (result.report or {}).get("students", {})
        outputs = run_outputs(result, card)  # the CLI writes the same files into its folder
        for name in result.students:
            info = report_students.get(name, {})
            students[name] = {
                "status": JobStatus.SUCCEEDED if not partial else JobStatus.CANCELLED,
                "partial": partial,
                "card": result.cards[name].model_dump(mode="json", exclude_none=True),
                "parameters": info.get("params"),
                "metrics": {k: v for k, v in info.items()
                            if k in ("final_loss", "teacher_agreement", "kd_ms_per_step", "kd_updates", "flag")},
            }
        delivered: Deliverables | None = None
        if partial:  # a cancelled run keeps its students' weights only (other formats: made on download)
            for output in (o for o in outputs if o.kind == "student"):
                stored = self.storage.write(student_key(self.job_id, output.student, self.token), output.write)
                self.written.append(stored.key)
                students[output.student].update(storage_key=stored.key, sha256=stored.sha256, size_bytes=stored.size_bytes)
        else:  # every format, verified, reported, evaluated: after the budget (deliverables.py)
            recorder.log("exporting every student to " + ", ".join(MODEL_FORMATS))
            with ExitStack() as stack:
                local_set = None
                if evaluation_set is not None:
                    local_set = (stack.enter_context(local_copy(
                        self.storage, evaluation_set.storage_key, job_dir, "." + evaluation_set.file_format)),
                        evaluation_set.filename or evaluation_set.storage_key.rsplit("/", 1)[-1])
                delivered = deliver(result, card, teacher_model, self.storage, self.job_id, self.token, job_dir,
                                    self.settings.export_latency_repeats, self.written, local_set)
            for name, stored in delivered.weights.items():
                students[name].update(storage_key=stored.key, sha256=stored.sha256, size_bytes=stored.size_bytes,
                                      report=_jsonable({**delivered.report_context, **delivered.reports[name]}))
            recorder.log(f"exported and verified {sum(len(r) for r in delivered.files.values())} file(s) in "
                         f"{delivered.export_s:.1f} s", export_s=delivered.export_s)
        samples_values: dict[str, Any] = {}
        for output in (o for o in outputs if o.kind == "samples"):
            skey = samples_key(self.job_id, self.token)
            stored = self.storage.write(skey, output.write)
            self.written.append(skey)
            samples_values = {"samples_key": stored.key, "samples_sha256": stored.sha256}
        final_status = JobStatus.SUCCEEDED if not partial else JobStatus.CANCELLED
        if partial and should_cancel.steps_after_request is not None:
            recorder.log(
                f"stopped {should_cancel.steps_after_request} step(s) after the cancel request",
                steps_after_cancel_request=should_cancel.steps_after_request,
                cancel_seen_after_s=round(should_cancel.seen_after_s or 0.0, 3),
            )
        recorder.log(f"job {final_status}", status=final_status)
        report = _jsonable(result.report) or {}
        values: dict[str, Any] = {"report": report, **samples_values}
        if not partial:
            values["progress"] = 1.0
        # Nothing fails silently: the budget advice, each student's low agreement with the teacher
        # and the classes that never reached the pool join the job's warnings; so do refused and
        # flagged files and an evaluation set that could not be used.
        report_warnings = [w for w in report.get("warnings") or [] if isinstance(w, str)]
        evaluation: dict[str, Any] | None = None
        if delivered is not None:
            report.setdefault("timings", {})["export_s"] = delivered.export_s
            report["exports"] = _jsonable(delivered.summary())
            report_warnings += delivered.warnings
            if delivered.calibration is not None:
                values.update(calibration_key=delivered.calibration.key, calibration_sha256=delivered.calibration.sha256,
                              calibration_size_bytes=delivered.calibration.size_bytes)
            if delivered.evaluation is not None and evaluation_set is not None:
                evaluation = {"id": new_id("evl"), "owner_id": owner_id, "evaluation_set_id": evaluation_set.id,
                              "source": "job_end", "attempts": 1, **_jsonable(delivered.evaluation)}
                if delivered.evaluation["status"] != "succeeded":
                    report_warnings.append(f"the evaluation on set {evaluation_set.id!r} failed: "
                                           f"{delivered.evaluation['error_message']}")
            elif named_set is not None and evaluation_set is None:
                report_warnings.append(f"evaluation set {named_set!r} was deleted before the job ended; not evaluated")
        self._finish(final_status, students, add_warnings=report_warnings,
                     files=delivered.files if delivered is not None else None, evaluation=evaluation, **values)
        return final_status


def _free_accelerator_memory() -> None:
    """After a failed run (an OOM above all) give the memory back before anything else runs."""
    gc.collect()
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort; the child process exits after the job anyway
        log.warning("could not release accelerator memory", exc_info=True)


def run_job(job_id: str) -> str:
    """Entry point of the task: claim, run, record. Returns what happened (for the worker log)."""
    settings = get_settings()
    sessions = session_factory()
    owner = new_lease_owner()
    with sessions() as s:
        if not claim(s, job_id, owner, settings.lease_seconds):
            log.info("job %s: not claimable (finished, running elsewhere, or unknown); message ignored", job_id)
            return "skipped"
    with sessions() as s:
        attempt = s.scalar(select(Job.attempts).where(Job.id == job_id))
    log.info("job %s: claimed by %s (attempt %s)", job_id, owner, attempt)
    hb = Heartbeat(sessions, job_id, owner, settings)
    hb.start()
    run = JobRun(job_id, owner, settings, get_storage(), sessions)
    outcome = JobStatus.FAILED
    try:
        recorder = EventRecorder(sessions, job_id, owner)
        # The attempt record: with every event written only under the lease, the claims in a
        # job's events never interleave with another attempt's events (at most one runner).
        cancel = CancelPoll(sessions, job_id, owner, settings.cancel_poll_seconds, hb)
        try:
            recorder.log(f"attempt {attempt} started", attempt=attempt)
            outcome = run.execute(recorder, cancel)
        except LeaseLost:
            run.discard_files()
            log.warning("job %s: lease lost; this attempt stops without writing results", job_id)
            return "lease_lost"
        except OperationalError:
            # The database went away: leave the job running; when the lease expires a sweep
            # re-sends it and it resumes from its checkpoint.
            run.discard_files()
            log.exception("job %s: database unavailable; leaving it to be resumed", job_id)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with a stated reason
            run.discard_files()
            code, message = classify(exc)
            log.exception("job %s failed: %s", job_id, message)
            try:
                recorder.log(f"job failed: {message}", code=code)
                run.fail(code, message)
            except LeaseLost:
                return "lease_lost"
            run.clean_scratch()
            return JobStatus.FAILED
        run.clean_scratch()
        return outcome
    finally:
        hb.stop()
        _free_accelerator_memory()
