"""Streaming multipart receiver for teacher uploads.

Starlette's ``request.form()`` spools the whole body before a route runs; a 2 GiB checkpoint
must instead go straight to a temp file, be hashed on the way, and be cut off with 413 the
moment it passes the cap. The multipart stream is parsed here chunk by chunk with
``python_multipart``'s push parser; memory stays at one network chunk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from dfmscd_service.api.errors import ApiError

FILE_FIELD, CARD_FIELD = "file", "card"
_HEADER_SLACK = 64 * 1024  # boundaries and part headers on top of file + card


class _TooLarge(Exception):
    pass


@dataclass
class ReceivedUpload:
    """A body that has been fully received: the file sits in ``path`` (caller deletes it)."""

    path: Path
    sha256: str
    size_bytes: int
    filename: str | None
    card_text: str
    extra_fields: list[str] = field(default_factory=list)


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    buffer: bytearray = field(default_factory=bytearray)


class _Receiver:
    def __init__(self, tmp_dir: Path, max_file_bytes: int, max_field_bytes: int,
                 on_card: Callable[[bytes], None] | None = None) -> None:
        self.on_card = on_card
        self.tmp_dir = tmp_dir
        self.max_file_bytes = max_file_bytes
        self.max_field_bytes = max_field_bytes
        self.part = _Part()
        self._hname = bytearray()
        self._hvalue = bytearray()
        self.file_handle: IO[bytes] | None = None
        self.file_path: Path | None = None
        self.file_seen = False
        self.file_name: str | None = None
        self.file_size = 0
        self.hasher = hashlib.sha256()
        self.fields: dict[str, bytes] = {}
        self.extra: list[str] = []
        self.ended = False
        self.error: ApiError | None = None

    # --- parser callbacks ---
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[self._hname.decode("latin-1").lower()] = self._hvalue.decode("latin-1")
        self._hname.clear()
        self._hvalue.clear()

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self.part.headers.get("content-disposition", ""))
        name = opts.get(b"name")
        filename = opts.get(b"filename")
        self.part.name = name.decode("utf-8", "replace") if name is not None else None
        self.part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        if self.part.name == FILE_FIELD:
            if self.file_seen:
                raise ApiError(422, "validation_error", "form field 'file' given more than once")
            self.file_seen = True
            self.file_name = self.part.filename
            fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.tmp_dir)
            self.file_path = Path(tmp)
            self.file_handle = os.fdopen(fd, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self.part.size += len(chunk)
        if self.part.name == FILE_FIELD:
            if self.part.size > self.max_file_bytes:
                raise _TooLarge()
            assert self.file_handle is not None
            self.file_handle.write(chunk)
            self.hasher.update(chunk)
        else:
            if self.part.size > self.max_field_bytes:
                raise ApiError(
                    413, "payload_too_large", f"form field {self.part.name!r} is over {self.max_field_bytes} bytes"
                )
            self.part.buffer += chunk

    def on_part_end(self) -> None:
        if self.part.name == FILE_FIELD:
            assert self.file_handle is not None
            self.file_handle.close()
            self.file_handle = None
            self.file_size = self.part.size
        elif self.part.name is not None:
            if self.part.name in self.fields:
                raise ApiError(422, "validation_error", f"form field {self.part.name!r} given more than once")
            self.fields[self.part.name] = bytes(self.part.buffer)
            if self.part.name == CARD_FIELD and self.on_card is not None:
                self.on_card(self.fields[CARD_FIELD])  # a bad card stops the upload here

    def on_end(self) -> None:
        self.ended = True

    def callbacks(self) -> dict:
        return {n: getattr(self, n) for n in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_part_data", "on_part_end", "on_end",
        )}

    def discard(self) -> None:
        if self.file_handle is not None:
            self.file_handle.close()
            self.file_handle = None
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"upload is larger than the limit of {limit} bytes")


async def receive_upload(
    request: Request,
    tmp_dir: Path,
    max_file_bytes: int,
    max_field_bytes: int,
    on_card: Callable[[bytes], None] | None = None,
) -> ReceivedUpload:
    """Stream ``file`` to disk and collect the small ``card`` field; 4xx on anything wrong.
    ``on_card`` sees the card as soon as it has arrived (before the file, if sent first)."""
    ctype, opts = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with fields 'file' and 'card'")
    boundary = opts.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "multipart/form-data without a boundary")
    max_body = max_file_bytes + 2 * max_field_bytes + _HEADER_SLACK
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length header") from None
        if declared_n > max_body:
            raise _too_large(max_file_bytes)

    tmp_dir.mkdir(parents=True, exist_ok=True)
    rx = _Receiver(tmp_dir, max_file_bytes, max_field_bytes, on_card)
    try:
        parser = MultipartParser(boundary, rx.callbacks())  # type: ignore[arg-type]
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_body:
                    raise _TooLarge()
                parser.write(chunk)
            parser.finalize()
        except _TooLarge:
            raise _too_large(max_file_bytes) from None
        except MultipartParseError as exc:
            raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
        except ClientDisconnect:
            raise ApiError(400, "bad_request", "client disconnected during upload") from None
        if not rx.ended:
            raise ApiError(400, "bad_request", "multipart body ended early (truncated upload)")
        if not rx.file_seen or rx.file_path is None:
            raise ApiError(422, "validation_error", "form field 'file' (the weights file) is required")
        if CARD_FIELD not in rx.fields:
            raise ApiError(422, "validation_error", "form field 'card' (the model card JSON) is required")
        try:
            card_text = rx.fields[CARD_FIELD].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "invalid_card", "model card is not UTF-8 text") from None
        return ReceivedUpload(
            path=rx.file_path,
            sha256=rx.hasher.hexdigest(),
            size_bytes=rx.file_size,
            filename=rx.file_name,
            card_text=card_text,
            extra_fields=sorted(set(rx.fields) - {CARD_FIELD}),
        )
    except BaseException:
        rx.discard()
        raise
