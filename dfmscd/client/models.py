"""Typed views of the service's JSON: attributes for the documented fields, the rest kept.

Every object keeps the JSON it was made from in ``.raw``; a field this client does not know (a
newer server) is still readable as an attribute (``job.some_new_field``) or ``job["some_new_field"]``.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="ApiObject")

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _dt(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class ApiObject:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _datetimes: ClassVar[tuple[str, ...]] = ()
    _nested: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        listed = {f.name for f in fields(cls) if f.default_factory is not MISSING}
        known = {f.name for f in fields(cls)} - {"raw"}
        kwargs: dict[str, Any] = {}
        for name in known:
            if name in listed and data.get(name) is None:
                continue  # absent (an older server): the field's empty default, not None
            value = data.get(name)
            if name in cls._datetimes:
                value = _dt(value)
            elif name in cls._nested and value is not None:
                kind = cls._nested[name]
                value = [kind.from_dict(v) for v in value] if isinstance(value, list) else kind.from_dict(value)
            kwargs[name] = value
        return cls(raw=dict(data), **kwargs)

    def __getattr__(self, name: str) -> Any:  # only called for names that are not fields
        if name.startswith("_"):
            raise AttributeError(name)
        raw = object.__getattribute__(self, "raw")
        if name in raw:
            return raw[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


@dataclass(frozen=True)
class ErrorInfo(ApiObject):
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Teacher(ApiObject):
    id: str = ""
    sha256: str | None = None
    size_bytes: int | None = None
    file_format: str | None = None
    filename: str | None = None
    card: dict[str, Any] | None = None
    created_at: datetime | None = None
    _datetimes: ClassVar[tuple[str, ...]] = ("created_at",)


@dataclass(frozen=True)
class Student(ApiObject):
    name: str = ""
    architecture: str = ""
    arch_kwargs: dict[str, Any] | None = None
    status: str | None = None
    partial: bool | None = None
    parameters: int | None = None
    metrics: dict[str, Any] | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    weights_url: str | None = None
    # Why this student's result is doubtful (held-out agreement with the teacher below 0.5, and the
    # likely cause), once the job has ended; None when it is not.
    flag: str | None = None
    # Present on GET /v1/jobs/{id}/students/{name} only.
    job_id: str | None = None
    card: dict[str, Any] | None = None
    formats: list[str] | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.flag)


@dataclass(frozen=True)
class Advice(ApiObject):
    """What a job's seconds budget buys. ``basis``: "history" (costs earlier runs measured on this
    kind of device, at creation), "run" (the run's own measurement when it started) or
    "unmeasured" (``missing`` names what no device has measured yet; ``message`` says so)."""

    basis: str = ""
    message: str = ""
    source: str | None = None
    device: str | None = None
    measured_at: datetime | None = None
    below_floor: bool = False
    epochs: int | None = None
    warmup_epochs: int | None = None
    kd_steps_per_epoch: int | None = None
    kd_updates: dict[str, int] | None = None
    min_kd_updates: int | None = None
    min_budget_s: float | None = None
    missing: list[str] | None = None
    _datetimes: ClassVar[tuple[str, ...]] = ("measured_at",)

    @property
    def measured(self) -> bool:
        return self.basis in ("history", "run")


@dataclass(frozen=True)
class Job(ApiObject):
    id: str = ""
    status: str = ""
    teacher_id: str | None = None
    preset: str | None = None
    config: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    seed: int | None = None
    metadata: dict[str, Any] | None = None
    progress: float = 0.0
    eta_seconds: float | None = None
    epoch: int = 0
    attempts: int = 0
    students: list[Student] = field(default_factory=list)
    error: ErrorInfo | None = None
    report: dict[str, Any] | None = None
    samples_url: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Advice, never errors: at creation, when the run starts (its budget below what the students
    # need) and when it ends (flagged students, classes that never reached the pool).
    warnings: list[str] = field(default_factory=list)
    advice: Advice | None = None  # seconds budgets only
    evaluation_set_id: str | None = None  # the set evaluated on when the job ends (list_evaluations)
    _datetimes: ClassVar[tuple[str, ...]] = ("created_at", "updated_at", "started_at", "finished_at")
    _nested: ClassVar[dict[str, Any]] = {"students": Student, "error": ErrorInfo, "advice": Advice}

    @property
    def done(self) -> bool:
        """True once the job can change no more (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def flags(self) -> dict[str, str]:
        """The flagged students' messages, by name."""
        return {s.name: s.flag for s in self.students if s.flag}

    def student(self, name: str) -> Student:
        for s in self.students:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass(frozen=True)
class Event(ApiObject):
    id: int = 0
    kind: str = ""
    epoch: int = 0
    progress: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    _datetimes: ClassVar[tuple[str, ...]] = ("created_at",)


@dataclass(frozen=True)
class Architecture(ApiObject):
    name: str = ""
    parameters: int | None = None
    source: str | None = None


@dataclass(frozen=True)
class EvaluationSet(ApiObject):
    """Labelled images uploaded to report accuracy on (never trained or calibrated on). ``summary``:
    ``images``, and ``x_shape`` (.npz) or ``image_size``/``channels``/``classes`` (archives), ``labels``."""

    id: str = ""
    sha256: str | None = None
    size_bytes: int | None = None
    file_format: str | None = None
    filename: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    _datetimes: ClassVar[tuple[str, ...]] = ("created_at",)


@dataclass(frozen=True)
class Evaluation(ApiObject):
    """A finished job evaluated on a set by the worker (``source``: "job_end" or "request").
    ``results``: ``data`` {file, n}, ``teacher`` {architecture, accuracy} | None, ``students``
    {name: {architecture, accuracy {"pytorch", <format>...}}}."""

    id: str = ""
    job_id: str = ""
    evaluation_set_id: str = ""
    source: str = ""
    status: str = ""
    results: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    _datetimes: ClassVar[tuple[str, ...]] = ("created_at", "finished_at")
    _nested: ClassVar[dict[str, Any]] = {"error": ErrorInfo}

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")

    @property
    def teacher_accuracy(self) -> float | None:
        return ((self.results or {}).get("teacher") or {}).get("accuracy")

    def accuracy(self, student: str) -> dict[str, float]:
        """One student's accuracy by what was run: "pytorch" and each format."""
        return dict((((self.results or {}).get("students") or {}).get(student) or {}).get("accuracy") or {})


@dataclass(frozen=True)
class StudentReport(ApiObject):
    """``GET /v1/jobs/{id}/students/{name}/report``: ``report`` (dfmscd.student_report: parameters, macs,
    flops, formats with size, verification, teacher agreement and latency at batch 1 and 64, cpu;
    None for a job from before reports), ``files`` (each format's status: verified, flagged, refused)
    and ``evaluations`` (this student's accuracy on each set the job was evaluated on)."""

    job_id: str = ""
    student: str = ""
    report: dict[str, Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        """Formats whose file is flagged (an INT8 file below its agreement threshold: served, marked)."""
        return [f["format"] for f in self.files if f.get("status") == "flagged"]

    @property
    def refused(self) -> dict[str, str]:
        """Formats refused by verification (never served), with why."""
        return {f["format"]: f.get("error") or "" for f in self.files if f.get("status") == "refused"}


@dataclass(frozen=True, repr=False)
class Download:
    """What ``download_student`` wrote: the file, its verified sha256 and size, the byte an
    existing partial file was resumed from (0: none), whether a stale partial was discarded, and
    how many ``Range`` requests it took (resuming an old partial, or after dropped connections).

    Path-like (``os.fspath`` gives ``path``), so it goes wherever a file name does:
    ``load_model(api.download_student(...))``, ``open(...)``."""

    path: Path
    sha256: str
    size_bytes: int
    resumed_from: int = 0
    restarted: bool = False
    range_requests: int = 0

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"<Download {os.fspath(self.path)!r} {self.size_bytes:,} bytes, sha256 {self.sha256[:12]}...>"


__all__ = ["Advice", "ApiObject", "Architecture", "Download", "ErrorInfo", "Evaluation", "EvaluationSet", "Event", "Job",
           "Student", "StudentReport", "Teacher", "TERMINAL_STATUSES"]
