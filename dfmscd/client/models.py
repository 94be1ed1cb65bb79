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


__all__ = ["Advice", "ApiObject", "Architecture", "Download", "ErrorInfo", "Event", "Job", "Student", "Teacher",
           "TERMINAL_STATUSES"]
