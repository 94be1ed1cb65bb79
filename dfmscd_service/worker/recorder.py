"""Turns Distiller callbacks into job_events rows and progress/metrics on the job.

The engine reports progress at most every 0.5 s and metrics once per epoch; writing every one
of them would make a fast run on a small input mostly database traffic, so progress on the
job row is written as it comes but progress *events* at most every ``PROGRESS_EVENT_S`` and
metrics events at most every ``METRICS_EVENT_S`` (the last one is always flushed).
A database hiccup drops an event (logged) rather than failing a run that may have taken hours.

The ``sizing`` event (a seconds budget's first start, and again once its first full epoch has
measured the KD steps per epoch) also writes back what the run derived: the effective config into
the job's stored config (a resumed run then reads it, and the checkpoint's fingerprint ignores
derived fields), its warnings and advice onto the job, and the measured costs into
``measured_costs`` for the API's advice on later jobs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dfmscd_service.core.measured_costs import advice_view, device_of, figures_from_sizing, merge_warnings, record_figures
from dfmscd_service.core.models import Job, JobEvent, JobStudent, utcnow

log = logging.getLogger("dfmscd.worker")
PROGRESS_EVENT_S = 2.0
METRICS_EVENT_S = 0.5


class LeaseLost(Exception):
    """Another worker owns this job now: stop and write nothing more."""


def _jsonable(value: Any) -> Any:
    """NaN/Inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class CostKeys:
    """How a run's measured costs are keyed: each student's name to its architecture key, the
    teacher's architecture key and the input shape (``core.measured_costs``)."""

    students: Mapping[str, str]
    teacher: str
    input_shape: Sequence[int]


class EventRecorder:
    def __init__(self, sessions: sessionmaker[Session], job_id: str, owner: str) -> None:
        self.sessions = sessions
        self.cost_keys: CostKeys | None = None  # set by the runner once it has read the job
        self.job_id = job_id
        self.owner = owner
        with sessions() as s:
            self.seq = s.scalar(select(func.coalesce(func.max(JobEvent.seq), 0)).where(JobEvent.job_id == job_id)) or 0
        self._last_progress_event = 0.0
        self._last_metrics_event = 0.0
        self._pending_metrics: tuple[int, float, dict[str, Any]] | None = None
        self.lost = False
        self.last_epoch, self.last_progress = 0, 0.0

    # --- writing ---
    def _insert(self, session: Session, kind: str, epoch: int, progress: float, data: dict[str, Any]) -> None:
        self.seq += 1
        session.add(JobEvent(job_id=self.job_id, seq=self.seq, kind=kind, epoch=epoch, progress=progress,
                             data=_jsonable(data), created_at=utcnow()))

    def _job_update(self, session: Session, **values: Any) -> None:
        res = session.execute(
            update(Job).where(Job.id == self.job_id, Job.lease_owner == self.owner).values(updated_at=utcnow(), **values)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            self.lost = True
            raise LeaseLost(self.job_id)

    def _student_metrics(self, session: Session, data: dict[str, Any], epoch: int) -> None:
        losses = data.get("student_loss")
        if not isinstance(losses, dict):
            return
        for name, loss in losses.items():
            session.execute(
                update(JobStudent)
                .where(JobStudent.job_id == self.job_id, JobStudent.name == name)
                .values(metrics=_jsonable({"epoch": epoch, "loss": loss}))
            )

    def write(self, kind: str, epoch: int, progress: float, data: dict[str, Any],
              job_values: dict[str, Any] | None = None) -> None:
        """One event (and optional job-row values) in one transaction; DB errors are logged."""
        seq_before = self.seq
        try:
            with self.sessions() as session:
                if job_values is not None:  # conditional on the lease: only the owner writes events
                    self._job_update(session, **job_values)
                self._insert(session, kind, epoch, progress, data)
                if kind == "metrics":
                    if job_values is None:  # student rows change: the job's updated_at must too (api/reads/answer_cache.py)
                        self._job_update(session)
                    self._student_metrics(session, data, epoch)
                session.commit()
        except LeaseLost:
            raise
        except IntegrityError:  # someone else wrote our next seq: we are not the owner any more
            self.lost = True
            raise LeaseLost(self.job_id) from None
        except OperationalError as exc:
            self.seq = seq_before
            log.warning("job %s: could not record %s event: %s", self.job_id, kind, str(exc).splitlines()[0])

    def log(self, message: str, **data: Any) -> None:
        self.write("log", self.last_epoch, self.last_progress, {"message": message, **data}, {})

    # --- the Distiller callback ---
    def __call__(self, event: Any) -> None:
        if self.lost:
            raise LeaseLost(self.job_id)
        now = time.monotonic()
        kind, epoch, progress, data = event.kind, int(event.epoch), float(event.progress), dict(event.data)
        self.last_epoch, self.last_progress = epoch, progress
        if kind == "progress":
            values: dict[str, Any] = {"progress": progress, "epoch": epoch}
            eta = data.get("eta_s")
            values["eta_seconds"] = float(eta) if isinstance(eta, (int, float)) and math.isfinite(eta) else None
            if now - self._last_progress_event >= PROGRESS_EVENT_S:
                self._last_progress_event = now
                self.write(kind, epoch, progress, data, values)
            else:
                try:
                    with self.sessions() as session:
                        self._job_update(session, **values)
                        session.commit()
                except OperationalError as exc:
                    log.warning("job %s: could not record progress: %s", self.job_id, str(exc).splitlines()[0])
        elif kind == "metrics":
            if now - self._last_metrics_event >= METRICS_EVENT_S:
                self._last_metrics_event = now
                self._pending_metrics = None
                self.write(kind, epoch, progress, data, {"epoch": epoch, "progress": progress})
            else:
                self._pending_metrics = (epoch, progress, data)
        elif kind == "sizing":
            self._sizing(epoch, progress, data)
        else:  # log, checkpoint, anything new: always kept
            self.write(kind, epoch, progress, data, {"epoch": epoch})

    def _sizing(self, epoch: int, progress: float, data: dict[str, Any]) -> None:
        """The event, with the effective config, warnings and advice on the job; then the costs."""
        try:
            with self.sessions() as session:
                row = session.execute(select(Job.warnings, Job.advice).where(Job.id == self.job_id)).one_or_none()
        except OperationalError as exc:
            log.warning("job %s: could not read its warnings: %s", self.job_id, str(exc).splitlines()[0])
            row = None
        warnings, old_advice = (row[0], row[1]) if row is not None else (None, None)
        # The estimate made at creation gives way to this run's own measurement.
        # ... and a run's first estimate to what its first full epoch measured.
        dropped = ([old_advice.get("message")] if isinstance(old_advice, dict) and old_advice.get("basis") in ("history", "run")
                   else [])
        device = device_of(data)
        values: dict[str, Any] = {
            "epoch": epoch,
            "warnings": merge_warnings(warnings, data.get("warnings") or [], dropped),
            "advice": _jsonable(advice_view(data.get("advice"), basis="run", device=device, measured_at=utcnow(),
                                            message=str(data.get("message") or ""))),
        }
        if isinstance(data.get("config"), dict):
            values["config"] = _jsonable(data["config"])
        self.write("sizing", epoch, progress, data, values)
        if self.cost_keys is None or device is None:
            return
        keys = self.cost_keys
        try:
            with self.sessions() as session:
                record_figures(session, device, keys.input_shape, figures_from_sizing(data, keys.students, keys.teacher),
                               job_id=self.job_id)
                session.commit()
        except (OperationalError, IntegrityError) as exc:  # a cache for later advice: never fails the run
            log.warning("job %s: could not store its measured costs: %s", self.job_id, str(exc).splitlines()[0])

    def flush(self) -> None:
        if self._pending_metrics is not None:
            epoch, progress, data = self._pending_metrics
            self._pending_metrics = None
            self.write("metrics", epoch, progress, data, {"epoch": epoch})
