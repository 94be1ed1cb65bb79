"""ORM rows → public response models (one place decides what a client may see)."""

from __future__ import annotations

from typing import Any

from dfmscd.formats import CALIBRATED_FORMATS, MODEL_FORMATS, NATIVE_FORMAT
from dfmscd_service.core.job_view import job_out, student_out
from dfmscd_service.core.models import Evaluation, EvaluationSet, JobEvent, JobStudent, StudentFile, Teacher
from dfmscd_service.api.schemas import (
    ErrorDetail,
    EvaluationOut,
    EvaluationSetOut,
    EventOut,
    StudentDetail,
    StudentFileOut,
    StudentReportOut,
    TeacherOut,
)

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


def downloadable_formats(s: JobStudent) -> list[str]:
    """What can be downloaded now: the files the worker stored (a refused format has none); for a job
    that ended before it exported every format, its weights and the float exports made on download."""
    if s.files:
        stored = [f.format for f in s.files if f.storage_key]
        return stored if NATIVE_FORMAT in stored or not s.storage_key else [NATIVE_FORMAT, *stored]
    return [f for f in MODEL_FORMATS if f not in CALIBRATED_FORMATS] if s.storage_key else []


def student_file_out(job_id: str, name: str, f: StudentFile) -> StudentFileOut:
    url = f"/v1/jobs/{job_id}/students/{name}/weights?format={f.format}" if f.storage_key else None
    return StudentFileOut(format=f.format, status=f.status, size_bytes=f.size_bytes, sha256=f.sha256,  # type: ignore[arg-type]
                          verification=f.verification, error=f.error, download_url=url)


def student_detail(job_id: str, s: JobStudent) -> StudentDetail:
    base = student_out(job_id, s).model_dump()
    return StudentDetail(**base, job_id=job_id, card=s.card, formats=downloadable_formats(s),
                         files=[student_file_out(job_id, s.name, f) for f in s.files])


def student_report_out(job_id: str, s: JobStudent, evaluations: list[Evaluation]) -> StudentReportOut:
    """The student's report and files, with its accuracy on every succeeded evaluation of the job."""
    accuracies: list[dict[str, Any]] = []
    for e in evaluations:
        results = e.results or {}
        mine = (results.get("students") or {}).get(s.name)
        if e.status != "succeeded" or not mine:
            continue
        accuracies.append({"evaluation_id": e.id, "evaluation_set_id": e.evaluation_set_id, "source": e.source,
                           "data": results.get("data"), "teacher_accuracy": (results.get("teacher") or {}).get("accuracy"),
                           "accuracy": mine.get("accuracy") or {}, "finished_at": e.finished_at})
    return StudentReportOut(job_id=job_id, student=s.name, report=s.report,
                            files=[student_file_out(job_id, s.name, f) for f in s.files], evaluations=accuracies)


def evaluation_set_out(e: EvaluationSet) -> EvaluationSetOut:
    return EvaluationSetOut(id=e.id, sha256=e.sha256, size_bytes=e.size_bytes, file_format=e.file_format,
                            filename=e.filename, summary={k: v for k, v in (e.summary or {}).items() if k != "fits"},
                            created_at=e.created_at)


def evaluation_out(e: Evaluation) -> EvaluationOut:
    error = ErrorDetail(code=e.error_code, message=e.error_message or "") if e.error_code else None
    return EvaluationOut(id=e.id, job_id=e.job_id, evaluation_set_id=e.evaluation_set_id, source=e.source,  # type: ignore[arg-type]
                         status=e.status, results=e.results, error=error, created_at=e.created_at,  # type: ignore[arg-type]
                         finished_at=e.finished_at)


def event_out(e: JobEvent) -> EventOut:
    return EventOut(id=e.seq, kind=e.kind, epoch=e.epoch, progress=e.progress, data=e.data or {}, created_at=e.created_at)
