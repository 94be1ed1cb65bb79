"""The S3-compatible storage backend (AWS S3, MinIO, moto's server, ...): ``core.storage_base``'s
``Storage`` on a bucket; ``core.storage.get_storage`` chooses it when ``storage_url`` is set.

Why its own module: only S3 mode needs boto3, and the disk backend stays the embedded default.
Writes stream: an ``S3Writer`` holds at most one part (``s3_part_bytes``) in memory, hashes
every byte on the way and sends full parts of a multipart upload; a body smaller than one part
is sent as a single PUT. An object appears only when its upload completes; on any error the
multipart upload is aborted, so a failed write leaves neither an object nor stored parts
(if the bucket itself is down the abort cannot reach it either: a bucket lifecycle rule
``AbortIncompleteMultipartUpload`` cleans those, see docs/multi-host.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from urllib3.exceptions import HTTPError as Urllib3Error

from dfmscd_service.core.settings import Settings
from dfmscd_service.core.storage_base import (
    CHUNK,
    ObjectWriter,
    StorageError,
    StorageUnavailable,
    StoredObject,
    check_key,
)

log = logging.getLogger("dfmscd.storage")
T = TypeVar("T")
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _call(what: str, fn: Callable[[], T]) -> T:
    """Run one S3 request, mapping botocore's errors onto the storage ones."""
    try:
        return fn()
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _MISSING or status == 404:
            raise FileNotFoundError(what) from None
        msg = f"object storage refused {what}: {code} {err.get('Message', '')}".strip()
        raise (StorageUnavailable if status >= 500 else StorageError)(msg) from None
    except NoCredentialsError:  # a configuration error, not an outage: say so
        raise StorageError(f"object storage refused {what}: no credentials (set AWS_ACCESS_KEY_ID/"
                           "AWS_SECRET_ACCESS_KEY or another source boto3 reads)") from None
    except (BotoCoreError, Urllib3Error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        log.warning("object storage unreachable during %s: %s: %s", what, type(exc).__name__, exc)
        # The endpoint stays in the server log: this message may reach a tenant (job errors).
        raise StorageUnavailable(f"object storage unreachable during {what} ({type(exc).__name__})") from None


class S3Writer:
    """One streamed upload; see the module docstring."""

    def __init__(self, storage: "S3Storage", key: str) -> None:
        self.storage, self.key = storage, key
        self._name = storage.name(key)
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    def write(self, data: bytes) -> None:
        assert not self._done, "writer already closed"
        self._hash.update(data)
        self._size += len(data)
        self._buf += data
        part = self.storage.part_bytes
        try:
            while len(self._buf) >= part:
                self._send_part(bytes(self._buf[:part]))
                del self._buf[:part]
        except BaseException:
            self.abort()
            raise

    def _send_part(self, body: bytes) -> None:
        c, bucket = self.storage.client, self.storage.bucket
        if self._upload_id is None:
            r = _call(f"starting the upload of {self.key}",
                      lambda: c.create_multipart_upload(Bucket=bucket, Key=self._name))
            self._upload_id = r["UploadId"]
        n = len(self._parts) + 1
        r = _call(f"part {n} of {self.key}", lambda: c.upload_part(
            Bucket=bucket, Key=self._name, UploadId=self._upload_id, PartNumber=n, Body=body))
        self._parts.append({"ETag": r["ETag"], "PartNumber": n})

    def commit(self) -> StoredObject:
        assert not self._done, "writer already closed"
        c, bucket = self.storage.client, self.storage.bucket
        digest = self._hash.hexdigest()
        try:
            if self._upload_id is None:  # smaller than one part: a single PUT
                body = bytes(self._buf)
                _call(f"writing {self.key}", lambda: c.put_object(
                    Bucket=bucket, Key=self._name, Body=body, Metadata={"sha256": digest}))
            else:
                if self._buf or not self._parts:
                    self._send_part(bytes(self._buf))
                _call(f"completing the upload of {self.key}", lambda: c.complete_multipart_upload(
                    Bucket=bucket, Key=self._name, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts}))
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buf = bytearray()
        self._upload_id = None  # completed: nothing left to abort
        return StoredObject(self.key, digest, self._size)

    def abort(self) -> None:
        """Drop what was sent; best effort (the bucket may be the thing that failed)."""
        self._done = True
        self._buf = bytearray()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self.storage.client.abort_multipart_upload(Bucket=self.storage.bucket, Key=self._name, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning("could not abort the multipart upload of %s: %s", self.key, exc)


class S3Storage:
    """Objects under ``prefix/`` in one bucket."""

    remote = True

    def __init__(self, bucket: str, prefix: str, client: Any, part_bytes: int, tmp_dir: Path | None = None) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.part_bytes = part_bytes
        self.tmp_dir = tmp_dir

    def name(self, key: str) -> str:
        """The object name of ``key`` in the bucket."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def open_writer(self, key: str) -> ObjectWriter:
        return S3Writer(self, key)

    def put_file(self, key: str, src: Path, *, move: bool = True) -> StoredObject:
        w = self.open_writer(key)
        try:
            with open(src, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    w.write(chunk)
        except BaseException:
            w.abort()
            raise
        stored = w.commit()
        if move:
            Path(src).unlink(missing_ok=True)
        return stored

    def write(self, key: str, writer: Callable[[Path], None]) -> StoredObject:
        """``writer(path)`` fills a local temp file that is uploaded only if it returns normally."""
        check_key(key)
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", suffix="-" + key.rsplit("/", 1)[-1], dir=self.tmp_dir)
        os.close(fd)
        tmp = Path(name)
        try:
            writer(tmp)
            return self.put_file(key, tmp, move=True)
        finally:
            tmp.unlink(missing_ok=True)

    def _get(self, key: str, **extra: Any) -> Any:
        return _call(f"reading {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=self.name(key), **extra))

    def open(self, key: str) -> BinaryIO:
        """A forward-only stream of the object (no seek); ``iter_bytes`` for ranges."""
        return self._get(key)["Body"]  # type: ignore[no-any-return]

    def iter_bytes(self, key: str, start: int, length: int) -> Iterator[bytes]:
        if length <= 0:
            return
        body = self._get(key, Range=f"bytes={start}-{start + length - 1}")["Body"]
        try:
            chunks = iter(body.iter_chunks(256 * 1024))
            while True:
                chunk = _call(f"reading {key}", lambda: next(chunks, None))
                if chunk is None:
                    return
                yield chunk
        finally:
            body.close()

    def download(self, key: str, dest: Path) -> None:
        body = self._get(key)["Body"]
        try:
            with open(dest, "wb") as fh:
                chunks = iter(body.iter_chunks(CHUNK))
                while (chunk := _call(f"reading {key}", lambda: next(chunks, None))) is not None:
                    fh.write(chunk)
        finally:
            body.close()

    def size(self, key: str) -> int:
        r = _call(key, lambda: self.client.head_object(Bucket=self.bucket, Key=self.name(key)))
        return int(r["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        _call(f"deleting {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self.name(key)))

    def delete_prefix(self, prefix: str) -> None:
        """``prefix`` itself and everything under ``prefix/``, unfinished uploads included."""
        self.delete(prefix)
        under = self.name(prefix) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=under)
        for page in _call(f"listing {prefix}", lambda: list(pages)):
            names = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if names:
                _call(f"deleting {prefix}", lambda: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": names, "Quiet": True}))
        uploads = _call(f"listing uploads under {prefix}",
                        lambda: self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=under))
        for u in uploads.get("Uploads", []):
            _call(f"aborting an upload under {prefix}", lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]))

    def local_path(self, key: str) -> Path | None:
        return None

    def presigned_url(self, key: str, filename: str, expires_s: int) -> str | None:
        params = {"Bucket": self.bucket, "Key": self.name(key),
                  "ResponseContentDisposition": f'attachment; filename="{filename}"'}
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s))


def make_client(endpoint_url: str | None, timeout_s: float = 30.0, max_attempts: int = 3) -> Any:
    """A boto3 S3 client; path-style addressing for a custom endpoint (MinIO, moto)."""
    config = Config(
        connect_timeout=timeout_s, read_timeout=timeout_s,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
        signature_version="s3v4",  # presigned URLs too (SigV2 is refused by newer AWS regions)
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


@lru_cache(maxsize=8)
def _cached(bucket: str, prefix: str, endpoint: str | None, part_bytes: int, tmp_dir: str,
            timeout_s: float, max_attempts: int, pid: int) -> S3Storage:
    # One client per process and configuration (a client made before a fork is not reused after it).
    return S3Storage(bucket, prefix, make_client(endpoint, timeout_s, max_attempts), part_bytes, Path(tmp_dir))


def s3_storage_for(settings: Settings) -> S3Storage:
    bucket, prefix = settings.s3_bucket_and_prefix
    return _cached(bucket, prefix, settings.s3_endpoint_url, settings.s3_part_bytes, str(settings.tmp_dir),
                   settings.s3_timeout_seconds, settings.s3_max_attempts, os.getpid())
