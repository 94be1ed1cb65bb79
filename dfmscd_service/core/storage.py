"""Where files live: a small interface so that an S3-compatible store can replace the disk.

Keys are relative POSIX paths (``teachers/<id>/weights.safetensors``). Writes are atomic (a
temp file in the same directory, fsync, ``os.replace``) so a reader never sees half a file and
a crash leaves at worst a ``.tmp-*`` file that is not a stored object.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dfmscd_service.core.settings import get_settings

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size_bytes: int


class Storage(Protocol):
    def put_file(self, key: str, src: Path, *, move: bool = True) -> StoredObject: ...
    def write(self, key: str, writer: Callable[[Path], None]) -> StoredObject: ...
    def open(self, key: str) -> BinaryIO: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...


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


class LocalStorage:
    """Files under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def _tmp_beside(self, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        os.close(fd)
        return Path(tmp)

    @staticmethod
    def _commit(tmp: Path, dest: Path) -> None:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

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
        dest = self._path(key)
        tmp = self._tmp_beside(dest)
        try:
            writer(tmp)
            digest, size = sha256_file(tmp)
            self._commit(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredObject(key, digest, size)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

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
    """Names only an interrupted atomic write leaves: ``.tmp-*`` (here) and ``.<name>.*.tmp`` (dfmscd.io)."""
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
    return LocalStorage(get_settings().storage_dir)
