"""The disk backend: objects are files under one root directory (the embedded default).

Writes are atomic (``dfmscd.atomic``: a temp file in the same directory, fsync, ``os.replace``),
so a reader never sees half a file and a crash leaves at worst a temp file that is not a stored
object; ``remove_stale_temp_files`` clears those on this host at start-up (in either mode: the
API's uploads and the worker's scratch are on this host's disk with a bucket too).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from dfmscd.atomic import atomic_path
from dfmscd_service.core.storage_base import ObjectWriter, StoredObject, check_key, iter_range, sha256_file


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
    """Names only an interrupted write leaves: ``.<name>.*.tmp`` (dfmscd.atomic), ``.tmp-*``
    (``storage_base.local_copy``'s and the S3 backend's temp copies) and ``upload-*.part`` (an
    upload cut off)."""
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
