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

from dfmscd_service.api.errors import ApiError
from dfmscd_service.core.models import JobStudent
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.storage import Storage

SUFFIX = {"onnx": "onnx", "torchscript": "pt"}


def _export(storage: Storage, src_key: str, fmt: str, dest_key: str) -> Any:
    from dfmscd.errors import DfmscdError
    from dfmscd.io import export_onnx, export_torchscript, load_model

    src = storage.local_path(src_key)
    if src is None:  # pragma: no cover - only LocalStorage exists today
        raise ApiError(501, "not_implemented", "exports need a local copy of the weights")
    module, card = load_model(src)
    fn = export_onnx if fmt == "onnx" else export_torchscript
    try:
        return storage.write(dest_key, lambda p: fn(module, card, p))
    except DfmscdError as exc:
        raise ApiError(422, "export_failed", f"cannot export to {fmt}: {exc}") from None


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
            key = f"jobs/{student.job_id}/exports/{student.name}.{SUFFIX[fmt]}"
            stored = _export(storage, student.storage_key, fmt, key)
            entry = {"key": stored.key, "sha256": stored.sha256, "size_bytes": stored.size_bytes}
            student.exports = {**(student.exports or {}), fmt: entry}
            session.commit()
            return entry
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
