"""A job as clients see it (``JobOut``): in core because the API answers with it and the worker's
webhooks carry it, and the worker may not import the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from dfmscd_service.core.models import Job, JobStatus, JobStudent


class ErrorDetail(BaseModel):
    code: str
    message: str


class StudentOut(BaseModel):
    name: str
    architecture: str
    arch_kwargs: dict[str, Any]
    status: str
    partial: bool
    parameters: int | None
    metrics: dict[str, Any]
    sha256: str | None
    size_bytes: int | None
    weights_url: str | None
    flag: str | None = Field(None, description="why this student's result is doubtful (its held-out agreement with "
                             "the teacher is below 0.5, with the likely cause); None when it is not")


class JobOut(BaseModel):
    id: str
    status: JobStatus
    teacher_id: str | None
    preset: str
    config: dict[str, Any]
    budget: dict[str, Any]
    seed: int
    metadata: dict[str, Any]
    progress: float
    eta_seconds: float | None
    epoch: int
    attempts: int
    students: list[StudentOut]
    error: ErrorDetail | None
    report: dict[str, Any] | None
    samples_url: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    warnings: list[str] = Field(default_factory=list, description="advice, never an error: at creation (one student "
                                "taking most of every shared KD step, a seconds budget below what the students need), "
                                "when the run starts (its own measurement of the budget) and when it ends (students "
                                "with low agreement with the teacher, classes that never reached the pool)")
    advice: dict[str, Any] | None = Field(None, description="what a seconds budget buys (None for an epochs budget): "
                                          "basis history|run|unmeasured, source, device, measured_at, message, "
                                          "below_floor, and epochs, kd_updates per student, min_budget_s, ... when measured")
    evaluation_set_id: str | None = Field(None, description="the evaluation set named at creation (evaluated when "
                                          "the job ends: GET /v1/jobs/{id}/evaluations)")


def _weights_url(job_id: str, s: JobStudent) -> str | None:
    return f"/v1/jobs/{job_id}/students/{s.name}/weights" if s.storage_key else None


def student_out(job_id: str, s: JobStudent) -> StudentOut:
    return StudentOut(
        name=s.name,
        architecture=s.architecture,
        arch_kwargs=s.arch_kwargs or {},
        status=s.status,
        partial=s.partial,
        parameters=s.parameters,
        metrics=s.metrics or {},
        sha256=s.sha256,
        size_bytes=s.size_bytes,
        weights_url=_weights_url(job_id, s),
        flag=(s.metrics or {}).get("flag") or None,
    )


def job_out(job: Job) -> JobOut:
    error = ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobOut(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        teacher_id=job.teacher_id,
        preset=job.preset,
        config=job.config,
        budget=job.budget,
        seed=job.seed,
        metadata=job.job_metadata or {},
        progress=job.progress,
        eta_seconds=job.eta_seconds,
        epoch=job.epoch,
        attempts=job.attempts,
        students=[student_out(job.id, s) for s in job.students],
        error=error,
        report=job.report,
        samples_url=f"/v1/jobs/{job.id}/samples.png" if job.samples_key else None,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        warnings=list(job.warnings or []),
        advice=job.advice,
        evaluation_set_id=job.evaluation_set_id,
    )
