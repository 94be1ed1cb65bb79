"""Where files live: a small interface so that an S3-compatible store can replace the disk.

Keys are relative POSIX paths (``teachers/<id>/weights.safetensors``). Writes are atomic
(``dfmscd.atomic``: a temp file in the same directory, fsync, ``os.replace``), so a reader
never sees half a file and a crash leaves at worst a temp file that is not a stored object.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dfmscd.atomic import atomic_path
from dfmscd_service.core.settings import get_settings

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
    return f"jobs/{job_id}/students/{name}.{token}.safetensors"


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


class _LocalWriter:
    """``dfmscd.atomic``'s temp file beside the destination, hashed as it is written; it becomes
    the object on ``commit`` and disappears on ``abort``."""

    def __init__(self, key: str, dest: Path) -> None:
        self.key = key
        self._atomic = atomic_path(dest)
        self.tmp = self._atomic.__enter__()
        self._fh: BinaryIO | None = open(self.tmp, "wb")
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> None:
        assert self._fh is not None, "writer already closed"
        self._fh.write(data)
        self._hash.update(data)
        self._size += len(data)

    def commit(self) -> StoredObject:
        assert self._fh is not None, "writer already closed"
        self._fh.close()
        self._fh = None
        self._atomic.__exit__(None, None, None)  # fsync, rename, fsync the directory
        return StoredObject(self.key, self._hash.hexdigest(), self._size)

    def abort(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        err = RuntimeError("write aborted")
        self._atomic.__exit__(RuntimeError, err, None)  # removes the temp file, leaves dest untouched


class LocalStorage:
    """Files under one root directory."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key))

    def put_file(self, key: str, src: Path, *, move: bool = True) -> StoredObject:
        def fill(tmp: Path) -> None:
            if move:
                try:
                    os.replace(src, tmp)  # same filesystem: no copy
                    return
                except OSError:
                    shutil.copyfile(src, tmp)
                    os.unlink(src)
                    return
            shutil.copyfile(src, tmp)

        return self.write(key, fill)

    def write(self, key: str, writer: Callable[[Path], None]) -> StoredObject:
        """``writer(path)`` fills a temp file that becomes ``key`` only if it returns normally."""
        with atomic_path(self._path(key)) as tmp:
            writer(tmp)
            digest, size = sha256_file(tmp)
        return StoredObject(key, digest, size)

    def open_writer(self, key: str) -> ObjectWriter:
        return _LocalWriter(key, self._path(key))

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def iter_bytes(self, key: str, start: int, length: int) -> Iterator[bytes]:
        with open(self._path(key), "rb") as fh:
            yield from iter_range(fh, start, length)

    def download(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._path(key), dest)

    def presigned_url(self, key: str, filename: str, expires_s: int) -> str | None:
        return None  # files on disk are served by the API itself

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


def _is_temp_name(name: str) -> bool:
    """Names only an interrupted write leaves: ``.<name>.*.tmp`` (dfmscd.atomic), ``.tmp-*`` (older
    versions of this module) and ``upload-*.part`` (an upload cut off)."""
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".tmp")) or (
        name.startswith("upload-") and name.endswith(".part")
    )


def remove_stale_temp_files(roots: list[Path], older_than_s: float) -> list[Path]:
    """Delete temp files that a killed process left behind (an upload cut off by an API crash,
    a student write cut off by a worker crash). Only files untouched for ``older_than_s`` go:
    a live write keeps its file's mtime fresh, so a process starting beside a running one never
    removes a write in progress. Returns what was removed."""
    cutoff = time.time() - older_than_s
    removed: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and _is_temp_name(path.name) and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # another process finished or removed it meanwhile
                continue
    return removed


def get_storage() -> Storage:
    """The configured store: a bucket when ``storage_url`` is set, else files under ``data_dir``."""
    settings = get_settings()
    if settings.storage_url:
        # Deferred: core.storage_s3 imports this module (and boto3, needed only in S3 mode).
        from dfmscd_service.core.storage_s3 import s3_storage_for

        return s3_storage_for(settings)
    return LocalStorage(settings.storage_dir)
