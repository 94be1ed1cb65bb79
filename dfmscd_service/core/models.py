"""ORM tables. The ``jobs`` row is the source of truth for a job; queue messages carry only its id."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship



class JobStatus(StrEnum):
    """Where a job (or one of its students, which is never ``cancelling``) stands. A ``str``: rows,
    JSON and comparisons with plain strings see the value."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATUSES = tuple(JobStatus)
ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)
TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    """Time-ordered ids (ms timestamp + 64 random bits) so that id order is creation order."""
    return f"{prefix}_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns aware datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # The tenant. By default every key is its own owner (owner_id == id).
    owner_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Teacher(Base):
    __tablename__ = "teachers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    file_format: Mapped[str] = mapped_column(String(16))  # "safetensors" | "pt"
    storage_key: Mapped[str] = mapped_column(String(255))
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    filename: Mapped[str | None] = mapped_column(String(255), default=None)
    # Advice found at upload (e.g. BN statistics disagreeing with the card's mean/std); never errors.
    warnings: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40))
    teacher_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("teachers.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    preset: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    samples_key: Mapped[str | None] = mapped_column(String(255), default=None)
    samples_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    # Advice found at creation (e.g. one student taking most of every shared step); never errors.
    warnings: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # What a seconds budget buys (dfmscd.sizing.Advice plus where its costs came from): from costs
    # measured before, at creation; replaced by the run's own measurement when it starts.
    advice: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The labelled set named at creation, evaluated by the worker when the job ends (reporting only).
    # No foreign key: deleting the set clears it explicitly (api/routes/evaluation_sets.py).
    evaluation_set_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # The INT8 calibration sample the worker stored at the end (uint8 N x C x H x W in an .npz).
    calibration_key: Mapped[str | None] = mapped_column(String(255), default=None)
    calibration_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    calibration_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Lease: who runs it and until when; renewed by the worker's heartbeat.
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)

    students: Mapped[list[JobStudent]] = relationship(
        back_populates="job", order_by="JobStudent.position", cascade="all, delete-orphan", lazy="selectin"
    )


class JobStudent(Base):
    __tablename__ = "job_students"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(128))
    arch_kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    parameters: Mapped[int | None] = mapped_column(BigInteger, default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    card: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    storage_key: Mapped[str | None] = mapped_column(String(255), default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Cached exports: {"onnx": {"key":..., "sha256":..., "size_bytes":...}, ...}
    # (jobs that ended before the worker exported every format; made on first download).
    exports: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The student report (dfmscd.student_report) the worker wrote when the job succeeded.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    job: Mapped[Job] = relationship(back_populates="students")
    files: Mapped[list[StudentFile]] = relationship(
        back_populates="student", order_by="StudentFile.id", cascade="all, delete-orphan", lazy="selectin"
    )


class StudentFile(Base):
    """One format of one student, exported and verified by the worker when its job succeeded.

    ``status``: ``verified``, ``flagged`` (an INT8 file below its agreement threshold: stored and
    served, marked) or ``refused`` (a float file that failed verification: nothing stored, never
    served; ``error`` says why)."""

    __tablename__ = "student_files"
    __table_args__ = (UniqueConstraint("student_id", "format", name="uq_student_files_format"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    student_id: Mapped[int] = mapped_column(Integer, ForeignKey("job_students.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str | None] = mapped_column(String(255), default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    verification: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    student: Mapped[JobStudent] = relationship(back_populates="files")


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per job: the public event id
    kind: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MeasuredCost(Base):
    """The latest time one unit of work took on one device (the ``sizing`` event of a run's first
    start), so the API can tell what a seconds budget buys before a job runs. ``batch_size`` is the
    batch it was measured at; readers scale ``ms`` linearly to theirs."""

    __tablename__ = "measured_costs"
    __table_args__ = (
        UniqueConstraint("device", "role", "architecture", "input_shape", name="uq_measured_costs_key"),
        Index("ix_measured_costs_kind_shape", "device_kind", "input_shape"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(255))  # the advice's device label, e.g. "cpu (AMD EPYC, 1 threads)"
    device_kind: Mapped[str] = mapped_column(String(16))  # "cpu" | "cuda"
    # kd | synthesis | teacher_forward | synthesis_teacher | synthesis_generator
    role: Mapped[str] = mapped_column(String(32))
    architecture: Mapped[str] = mapped_column(String(255))  # a zoo name (+ its kwargs), or "generator:<width>x<latent>"
    input_shape: Mapped[str] = mapped_column(String(64))  # "CxHxW"
    batch_size: Mapped[int] = mapped_column(Integer)
    ms: Mapped[float] = mapped_column(Float)
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)  # the run that measured it (may be deleted)


class EvaluationSet(Base):
    """A labelled image set an owner uploaded (a .npz or a class-folder archive), for reporting
    accuracy only: nothing trains or calibrates on it."""

    __tablename__ = "evaluation_sets"
    __table_args__ = (Index("ix_evaluation_sets_owner_id_id", "owner_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    file_format: Mapped[str] = mapped_column(String(16))  # npz | tar | tar.gz | zip
    storage_key: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str | None] = mapped_column(String(255), default=None)
    # What it holds, read at upload (dfmscd.evaluate.describe_evaluation_set): images, shape, labels.
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """A finished job's teacher and students (PyTorch weights and every stored file) evaluated on
    one set by the worker: at the job's end when the job named the set, or on request."""

    __tablename__ = "evaluations"
    __table_args__ = (
        Index("ix_evaluations_job_id_id", "job_id", "id"),
        Index("ix_evaluations_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    evaluation_set_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("evaluation_sets.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(16))  # job_end | request
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)  # queued|running|succeeded|failed
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    owner_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """Where a tenant wants job events POSTed; the secret signs them (kept as is: the service must sign)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_owner_id_id", "owner_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Failed attempts since the last success, and when that run of failures began.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """The outbox: one message for one endpoint, written in the transaction that changed the job.

    ``next_attempt_at`` doubles as the claim: a deliverer moves it forward by the claim timeout
    before it POSTs, so a deliverer that dies mid-attempt leaves the message due again later.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # msg_…: the webhook-id header
    endpoint_id: Mapped[str] = mapped_column(String(40), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)  # the exact body, identical on every attempt
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # [{"at", "status_code", "error", "duration_ms"}, ...], the most recent attempts
    attempt_log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
