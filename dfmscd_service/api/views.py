"""ORM rows → public response models (one place decides what a client may see)."""

from __future__ import annotations

from dfmscd_service.core.models import Job, JobEvent, JobStudent, Teacher
from dfmscd_service.api.schemas import ErrorDetail, EventOut, JobOut, StudentDetail, StudentOut, TeacherOut

EXPORT_FORMATS = ("safetensors", "onnx", "torchscript")


def teacher_out(t: Teacher) -> TeacherOut:
    return TeacherOut(
        id=t.id,
        sha256=t.sha256,
        size_bytes=t.size_bytes,
        file_format=t.file_format,
        filename=t.filename,
        card=t.card,
        created_at=t.created_at,
    )


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
    )


def student_detail(job_id: str, s: JobStudent) -> StudentDetail:
    base = student_out(job_id, s).model_dump()
    return StudentDetail(
        **base, job_id=job_id, card=s.card, formats=list(EXPORT_FORMATS) if s.storage_key else []
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
    )


def event_out(e: JobEvent) -> EventOut:
    return EventOut(id=e.seq, kind=e.kind, epoch=e.epoch, progress=e.progress, data=e.data or {}, created_at=e.created_at)
