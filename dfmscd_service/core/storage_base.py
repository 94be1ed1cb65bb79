"""What every storage backend shares: the ``Storage`` interface, its errors and objects, key naming
and the helpers that work on any backend (``local_copy``, ``sha256_file``, ``iter_range``).

Keys are relative POSIX paths (``teachers/<id>/weights.safetensors``). A backend's writes are
atomic: a reader never sees half an object, and a crash leaves at worst a temp file (or an
unfinished multipart upload) that is not a stored object. The backends (``storage_local``,
``storage_s3``) import this module and never each other; ``storage.get_storage`` chooses one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dfmscd.formats import MODEL_FORMATS

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size_bytes: int


class StorageError(Exception):
    """The store refused an operation (not a missing key: that is ``FileNotFoundError``)."""


class StorageUnavailable(StorageError):
    """The store cannot be reached (connection refused, timeouts, 5xx): nothing was written."""


class ObjectWriter(Protocol):
    """A streamed write: bytes go in as they arrive; ``key`` exists only after ``commit``."""

    key: str

    def write(self, data: bytes) -> None: ...
    def commit(self) -> StoredObject: ...
    def abort(self) -> None: ...


class Storage(Protocol):
    remote: bool  # True when objects are not files on this host (local_path is None)

    def put_file(self, key: str, src: Path, *, move: bool = True) -> StoredObject: ...
    def write(self, key: str, writer: Callable[[Path], None]) -> StoredObject: ...
    def open_writer(self, key: str) -> ObjectWriter: ...
    def open(self, key: str) -> BinaryIO: ...
    def iter_bytes(self, key: str, start: int, length: int) -> Iterator[bytes]: ...
    def download(self, key: str, dest: Path) -> None: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...
    def presigned_url(self, key: str, filename: str, expires_s: int) -> str | None: ...


# --- key naming (one place, so the API and the worker agree) ---
def teacher_prefix(teacher_id: str) -> str:
    return f"teachers/{teacher_id}"


def teacher_key(teacher_id: str, file_format: str) -> str:
    return f"{teacher_prefix(teacher_id)}/weights.{'safetensors' if file_format == 'safetensors' else 'pt'}"


def student_key(job_id: str, name: str, token: str) -> str:
    return student_file_key(job_id, name, "safetensors", token)


def student_file_key(job_id: str, name: str, fmt: str, token: str) -> str:
    """A student's file in one format, as the worker stores it at the job's end (``token``: the attempt)."""
    return f"jobs/{job_id}/students/{name}.{token}{MODEL_FORMATS[fmt].suffix}"


def calibration_key(job_id: str, token: str) -> str:
    """The job's INT8 calibration sample (uint8 N x C x H x W, array ``x`` of an .npz)."""
    return f"jobs/{job_id}/calibration.{token}.npz"


def job_prefix(job_id: str) -> str:
    """Everything a job stored (students, exports, samples, calibration, checkpoint)."""
    return f"jobs/{job_id}"


def evaluation_set_prefix(set_id: str) -> str:
    return f"evaluation-sets/{set_id}"


def evaluation_set_key(set_id: str, file_format: str) -> str:
    """``file_format``: npz, tar, tar.gz or zip (the suffix the readers go by)."""
    return f"{evaluation_set_prefix(set_id)}/data.{file_format}"


def samples_key(job_id: str, token: str) -> str:
    return f"jobs/{job_id}/samples.{token}.png"


def export_key(job_id: str, name: str, suffix: str) -> str:
    return f"jobs/{job_id}/exports/{name}.{suffix}"


def checkpoint_key(job_id: str) -> str:
    """A running job's checkpoint, mirrored here when storage is remote (resume on any host)."""
    return f"jobs/{job_id}/checkpoint.pt"


def check_key(key: str) -> list[str]:
    """The key's parts; ``ValueError`` for anything that could escape a root or a prefix."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
        raise ValueError(f"invalid storage key {key!r}")
    return parts


@contextmanager
def local_copy(storage: Storage, key: str, tmp_dir: Path, suffix: str = "") -> Iterator[Path]:
    """A local file with the object's bytes: the stored file itself on disk, otherwise a
    downloaded temp copy (named ``suffix``) that is removed on exit."""
    path = storage.local_path(key)
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(key)
        yield path
        return
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-copy-", suffix=suffix, dir=tmp_dir)
    os.close(fd)
    tmp = Path(name)
    try:
        storage.download(key, tmp)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def iter_range(fh: BinaryIO, start: int, length: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    fh.seek(start)
    left = length
    while left > 0:
        data = fh.read(min(chunk, left))
        if not data:
            break
        left -= len(data)
        yield data
