"""File responses with a strong ETag, ``If-None-Match`` (304) and single ``Range`` requests (206/416).

Written over the Storage interface rather than Starlette's FileResponse so that the same code
serves the disk and an S3 bucket (a ranged GET of the bucket per request), and so that a bad
range answers our JSON error shape. With ``DFMSCD_S3_PRESIGN=true`` and a bucket, the answer is
instead a 307 to a short-lived presigned URL: the bucket serves the bytes (and the ranges).
"""

from __future__ import annotations

import re

from fastapi import Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from dfmscd_service.api.http.errors import error_response
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.storage_base import Storage, StorageUnavailable

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def _parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive), None to ignore the header (multi-range / other unit), or 'bad'."""
    m = _RANGE.match(header.strip().replace(" ", ""))
    if not m:
        return None
    first, last = m.groups()
    if first == "" and last == "":
        return "bad"
    if first == "":
        n = int(last)
        if n == 0:
            return "bad"
        return (max(0, size - n), size - 1) if size else "bad"
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "bad"
    return start, min(end, size - 1)


def file_response(
    request: Request, storage: Storage, key: str, sha256: str, media_type: str, filename: str
) -> Response:
    etag = f'"{sha256}"'
    base = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=0, must-revalidate",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={k: v for k, v in base.items() if k != "Content-Disposition"})
    settings = get_settings()
    try:
        size = storage.size(key)
        url = storage.presigned_url(key, filename, settings.s3_presign_seconds) if settings.s3_presign else None
    except FileNotFoundError:
        return error_response(404, "not_found", f"file {filename!r} is missing from storage")
    except StorageUnavailable as exc:
        return error_response(503, "storage_unavailable", f"object storage is unreachable; try again later ({exc})",
                              {"Retry-After": "5"})
    if url is not None:
        return RedirectResponse(url, status_code=307, headers={"ETag": etag, "Cache-Control": "no-store"})
    rng_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    rng = None
    if rng_header and (if_range is None or if_range.strip() == etag):
        rng = _parse_range(rng_header, size)
    if rng == "bad":
        return error_response(
            416, "range_not_satisfiable", f"range {rng_header!r} is outside the {size}-byte file",
            {"Content-Range": f"bytes */{size}"},
        )

    def body(start: int, length: int):  # type: ignore[no-untyped-def]
        yield from storage.iter_bytes(key, start, length)

    if rng is None:
        return StreamingResponse(body(0, size), media_type=media_type, headers={**base, "Content-Length": str(size)})
    start, end = rng  # type: ignore[misc]
    length = end - start + 1
    headers = {**base, "Content-Length": str(length), "Content-Range": f"bytes {start}-{end}/{size}"}
    return StreamingResponse(body(start, length), status_code=206, media_type=media_type, headers=headers)
