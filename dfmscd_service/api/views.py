"""ORM rows → public response models (one place decides what a client may see)."""

from __future__ import annotations

from dfmscd.formats import MODEL_FORMATS
from dfmscd_service.core.job_view import job_out, student_out
from dfmscd_service.core.models import JobEvent, JobStudent, Teacher
from dfmscd_service.api.schemas import EventOut, StudentDetail, TeacherOut

__all__ = ["job_out", "student_out"]  # the job's shape is built in core (the worker's webhooks use it too)



def teacher_out(t: Teacher) -> TeacherOut:
    return TeacherOut(
        id=t.id,
        sha256=t.sha256,
        size_bytes=t.size_bytes,
        file_format=t.file_format,
        filename=t.filename,
        card=t.card,
        created_at=t.created_at,
        warnings=list(t.warnings or []),
    )


def student_detail(job_id: str, s: JobStudent) -> StudentDetail:
    base = student_out(job_id, s).model_dump()
    return StudentDetail(
        **base, job_id=job_id, card=s.card, formats=list(MODEL_FORMATS) if s.storage_key else []
    )


def event_out(e: JobEvent) -> EventOut:
    return EventOut(id=e.seq, kind=e.kind, epoch=e.epoch, progress=e.progress, data=e.data or {}, created_at=e.created_at)
