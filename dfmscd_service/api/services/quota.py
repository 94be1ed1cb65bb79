"""The per-owner storage quota (``DFMSCD_MAX_STORAGE_BYTES_PER_KEY``): what an owner keeps in storage,
and the checks an upload passes before (early) and while (under the owner's lock) it is inserted.

Counted: teachers, every stored student file (the weights, and each format the worker exported at
the job's end), each job's INT8 calibration sample, and evaluation sets. Exports made on download
for jobs that ended before the worker exported every format are a cache and are not counted.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dfmscd.formats import NATIVE_FORMAT
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.core.db import session_factory
from dfmscd_service.core.models import EvaluationSet, Job, JobStudent, StudentFile, Teacher
from dfmscd_service.core.settings import get_settings


def _sum(session: Session, query) -> int:  # type: ignore[no-untyped-def]
    return int(session.scalar(query) or 0)


def storage_used(session: Session, owner_id: str) -> int:
    """Bytes an owner keeps in storage (see the module doc)."""
    teachers = select(func.coalesce(func.sum(Teacher.size_bytes), 0)).where(Teacher.owner_id == owner_id)
    weights = (select(func.coalesce(func.sum(JobStudent.size_bytes), 0))
               .join(Job, Job.id == JobStudent.job_id).where(Job.owner_id == owner_id))
    # The safetensors file is the student's weights, counted above.
    files = (select(func.coalesce(func.sum(StudentFile.size_bytes), 0))
             .join(JobStudent, JobStudent.id == StudentFile.student_id).join(Job, Job.id == JobStudent.job_id)
             .where(Job.owner_id == owner_id, StudentFile.format != NATIVE_FORMAT))
    calibration = select(func.coalesce(func.sum(Job.calibration_size_bytes), 0)).where(Job.owner_id == owner_id)
    sets = select(func.coalesce(func.sum(EvaluationSet.size_bytes), 0)).where(EvaluationSet.owner_id == owner_id)
    return sum(_sum(session, q) for q in (teachers, weights, files, calibration, sets))


def check_quota(session: Session, owner_id: str, extra: int) -> None:
    """413 when ``extra`` more bytes would take the owner over the quota (0 = no quota)."""
    limit = get_settings().max_storage_bytes_per_key
    if not limit:
        return
    used = storage_used(session, owner_id)
    if used + extra > limit:
        raise ApiError(413, "storage_quota_exceeded", f"storage quota of {limit} bytes would be exceeded ({used} used)")


def precheck_quota(owner_id: str, extra: int) -> None:
    """Refuse early, before the file is stored; the binding check is the locked one at insert."""
    with session_factory()() as session:
        check_quota(session, owner_id, extra)
