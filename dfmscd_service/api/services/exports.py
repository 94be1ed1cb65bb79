"""ONNX / TorchScript exports of a stored student, made on first download and cached in storage.

A per-file lock (``flock``, so it also holds across API processes) makes concurrent first
downloads wait for one export instead of racing, which keeps the recorded sha256 (the ETag)
equal to the bytes served.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from dfmscd.formats import file_name
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.services import torch_checks, torch_pool
from dfmscd_service.core.models import JobStudent
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.storage_base import Storage, local_copy



def _export(storage: Storage, src_key: str, fmt: str, dest_key: str) -> Any:
    """Export in the torch pool (``torch_checks.export_model``): the web process never loads torch."""
    # With remote storage the student is read from a temp copy (removed after the export).
    with local_copy(storage, src_key, get_settings().tmp_dir, ".safetensors") as src:

        def write(dest: Path) -> None:
            refusal = torch_pool.call(torch_checks.export_model, str(src), fmt, str(dest))
            if refusal is not None:
                raise ApiError(422, refusal.code, refusal.message)

        return storage.write(dest_key, write)


def ensure_export(session: Session, storage: Storage, student: JobStudent, fmt: str) -> dict[str, Any]:
    """The cached export's ``{key, sha256, size_bytes}``, exporting it first if needed."""
    assert student.storage_key is not None
    cached = (student.exports or {}).get(fmt)
    if cached and storage.exists(cached["key"]):
        return cached
    lock_dir = get_settings().tmp_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock_path = Path(lock_dir) / f"{student.job_id}.{student.name}.{fmt}.lock"
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            session.refresh(student)
            cached = (student.exports or {}).get(fmt)
            if cached and storage.exists(cached["key"]):
                return cached
            key = f"jobs/{student.job_id}/exports/{file_name(student.name, fmt)}"
            stored = _export(storage, student.storage_key, fmt, key)
            entry = {"key": stored.key, "sha256": stored.sha256, "size_bytes": stored.size_bytes}
            student.exports = {**(student.exports or {}), fmt: entry}
            session.commit()
            return entry
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
