"""Evaluation of a finished job on a labelled set, in the worker: the teacher's accuracy and every
student's, for its PyTorch weights and for each stored file (ONNX, TorchScript, INT8 ONNX, ...),
each file run as a deployment would run it (``dfmscd.io.verify.file_logits``). For reporting
only: nothing is trained or calibrated on the set.

Two callers: the job's own end (``deliverables``, when the job named a set) and the
``dfmscd.evaluate`` task (``run_evaluation``), which claims an ``evaluations`` row with a
conditional UPDATE and a lease renewed by a heartbeat, like a job, so a duplicate message is
harmless and a crashed worker's evaluation is sent again by the sweep.
"""

from __future__ import annotations

import logging
import shutil
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from dfmscd.errors import DfmscdError
from dfmscd.evaluate import read_evaluation_set
from dfmscd.formats import NATIVE_FORMAT
from dfmscd.io import ModelCard, load_model, load_teacher
from dfmscd.io.verify import file_logits, student_logits
from dfmscd_service.core.db import session_factory
from dfmscd_service.core.models import Evaluation, EvaluationSet, Job, JobStudent, Teacher, utcnow
from dfmscd_service.core.settings import Settings, get_settings
from dfmscd_service.core.storage import get_storage
from dfmscd_service.core.storage_base import Storage, StorageError, StorageUnavailable, local_copy
from dfmscd_service.worker.lease import claim_evaluation, new_lease_owner, renew_evaluation

log = logging.getLogger("dfmscd.worker")


@dataclass
class StudentFiles:
    """One student to evaluate: its module (None: none in memory) and its files by format."""

    architecture: str
    module: Any
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class EvaluationFailure(Exception):
    code: str
    message: str


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())


def evaluate_on_set(data: Path, display_name: str, card: ModelCard, teacher: Any,
                    students: dict[str, StudentFiles]) -> dict[str, Any]:
    """``{"data": {"file", "n"}, "teacher": {"architecture", "accuracy"} | None, "students": {name:
    {"architecture", "accuracy": {"pytorch", <format>...}}}}``. The set is read once, for ``card``
    (the teacher's: every student shares its input shape, normalisation and classes); a set that does
    not fit raises the library's one-line error (``DfmscdError``)."""
    x, y = read_evaluation_set(data, card)
    xn, yn = x.numpy(), y.numpy()
    out_students: dict[str, Any] = {}
    for name, s in students.items():
        accuracy: dict[str, float] = {}
        if s.module is not None:
            accuracy["pytorch"] = _accuracy(student_logits(s.module, xn), yn)
        for fmt, path in s.files.items():
            accuracy[fmt] = _accuracy(file_logits(fmt, path, xn), yn)
        out_students[name] = {"architecture": s.architecture, "accuracy": accuracy}
    teacher_result = None
    if teacher is not None:
        teacher_result = {"architecture": card.architecture, "accuracy": _accuracy(student_logits(teacher, xn), yn)}
    return {"data": {"file": display_name, "n": int(xn.shape[0])}, "teacher": teacher_result, "students": out_students}


# --- the dfmscd.evaluate task ----------------------------------------------------------------

class _Heartbeat(threading.Thread):
    """Renews the evaluation's lease; an evaluation is short, so a lost lease only stops the write."""

    def __init__(self, sessions: sessionmaker[Session], evaluation_id: str, owner: str, settings: Settings) -> None:
        super().__init__(name=f"lease-{evaluation_id}", daemon=True)
        self.sessions, self.evaluation_id, self.owner, self.settings = sessions, evaluation_id, owner, settings
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_seconds):
            try:
                with self.sessions() as s:
                    if not renew_evaluation(s, self.evaluation_id, self.owner, self.settings.lease_seconds):
                        return
            except Exception as exc:  # noqa: BLE001 - the database restarting: keep trying
                log.warning("evaluation %s: lease renewal failed: %s", self.evaluation_id, str(exc).splitlines()[0])


def _suffix(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    for suffix in (".int8.onnx", ".torchscript.pt", ".tar.gz", ".safetensors", ".onnx", ".npz", ".tar", ".tgz", ".zip"):
        if name.endswith(suffix):
            return suffix
    return ""


def _stored_files(student: JobStudent) -> dict[str, str]:
    """Format -> storage key of what the student has: the worker's verified files (a refused one has
    none), else (a job that ended before those existed) its weights and the exports made on download."""
    if student.files:
        return {f.format: f.storage_key for f in student.files if f.storage_key}
    keys = {NATIVE_FORMAT: student.storage_key} if student.storage_key else {}
    keys.update({fmt: e["key"] for fmt, e in (student.exports or {}).items() if isinstance(e, dict) and e.get("key")})
    return keys


def _evaluate_stored(storage: Storage, settings: Settings, job: Job, teacher: Teacher | None,
                     evaluation_set: EvaluationSet, scratch: Path) -> dict[str, Any]:
    """Local copies of the set, the teacher and every stored file (the stored file itself on disk,
    a temp copy from a bucket), then ``evaluate_on_set``."""
    with ExitStack() as stack:
        def copy(key: str) -> Path:
            if not storage.exists(key):
                raise EvaluationFailure("file_missing", f"{key.rsplit('/', 1)[-1]} is missing from storage")
            return stack.enter_context(local_copy(storage, key, scratch, _suffix(key)))

        students: dict[str, StudentFiles] = {}
        card: ModelCard | None = None
        for s in job.students:
            keys = _stored_files(s)
            if NATIVE_FORMAT not in keys:
                continue
            files = {fmt: copy(key) for fmt, key in keys.items()}
            module, student_card = load_model(files[NATIVE_FORMAT])
            card = card or student_card
            students[s.name] = StudentFiles(s.architecture, module, files)
        if not students:
            raise EvaluationFailure("not_ready", f"job {job.id!r} has no stored students to evaluate")
        teacher_module = None
        if teacher is not None and storage.exists(teacher.storage_key):
            card = ModelCard.model_validate(teacher.card)
            weights = copy(teacher.storage_key)
            teacher_module = load_teacher(weights, card, max_bytes=max(settings.max_upload_bytes, 1))
        assert card is not None
        data = copy(evaluation_set.storage_key)  # a copy keeps the suffix the library reads the set by
        return evaluate_on_set(data, evaluation_set.filename or data.name, card, teacher_module, students)


def run_evaluation(evaluation_id: str) -> str:
    """Entry point of the ``dfmscd.evaluate`` task: claim, evaluate, record. Returns what happened."""
    settings = get_settings()
    sessions = session_factory()
    owner = new_lease_owner()
    with sessions() as s:
        if not claim_evaluation(s, evaluation_id, owner, settings.lease_seconds):
            log.info("evaluation %s: not claimable (finished, running elsewhere, or unknown); message ignored",
                     evaluation_id)
            return "skipped"
    if settings.torch_threads:
        import torch  # deferred on purpose: only the task's child loads it

        torch.set_num_threads(settings.torch_threads)
    hb = _Heartbeat(sessions, evaluation_id, owner, settings)
    hb.start()
    scratch = settings.data_dir / "evaluations" / evaluation_id
    values: dict[str, Any]
    try:
        # Rows read, then the session closed: no connection is held while the models run (the job's
        # students and their files are loaded eagerly, so the detached rows are complete).
        with sessions() as s:
            evaluation = s.get(Evaluation, evaluation_id)
            job = s.get(Job, evaluation.job_id) if evaluation is not None else None
            evaluation_set = s.get(EvaluationSet, evaluation.evaluation_set_id) if evaluation is not None else None
            teacher = s.get(Teacher, job.teacher_id) if job is not None and job.teacher_id else None
        if job is None or evaluation_set is None:  # deleted meanwhile (with its job or its set)
            log.info("evaluation %s: its job or set was deleted; nothing to do", evaluation_id)
            return "gone"
        try:
            results = _evaluate_stored(get_storage(), settings, job, teacher, evaluation_set, scratch)
            values = {"status": "succeeded", "results": results}
        except EvaluationFailure as exc:
            values = {"status": "failed", "error_code": exc.code, "error_message": exc.message}
        except DfmscdError as exc:
            values = {"status": "failed", "error_code": "invalid_evaluation_set",
                      "error_message": str(exc).splitlines()[0]}
        except StorageUnavailable as exc:
            values = {"status": "failed", "error_code": "storage_unavailable",
                      "error_message": f"object storage unavailable: {str(exc).splitlines()[0]}"}
        except StorageError as exc:
            values = {"status": "failed", "error_code": "storage_error", "error_message": str(exc).splitlines()[0]}
        except Exception as exc:  # noqa: BLE001 - any failure ends the evaluation with a stated reason
            log.exception("evaluation %s failed", evaluation_id)
            values = {"status": "failed", "error_code": "internal_error",
                      "error_message": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        with sessions() as s:
            done = s.execute(
                update(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None, finished_at=utcnow(), **values)
            ).rowcount  # type: ignore[attr-defined]
            s.commit()
        if not done:
            log.warning("evaluation %s: lease lost; its result was not recorded", evaluation_id)
            return "lease_lost"
        log.info("evaluation %s %s", evaluation_id, values["status"])
        return str(values["status"])
    finally:
        hb.stopped.set()
        shutil.rmtree(scratch, ignore_errors=True)

