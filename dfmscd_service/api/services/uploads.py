"""Streaming multipart receiver for uploads (teachers, evaluation sets).

Starlette's ``request.form()`` spools the whole body before a route runs; a 2 GiB checkpoint
must instead go straight to a temp file, be hashed on the way, and be cut off with 413 the
moment it passes the cap. The multipart stream is parsed here chunk by chunk with
``python_multipart``'s push parser; memory stays at one network chunk.

With remote storage the route passes ``open_sink``: the file then goes straight into a storage
writer (an S3 multipart upload, one part in memory) instead of a temp file, and is committed
only once the whole body has been received intact; any error aborts it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Awaitable, Callable

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.core.storage_base import ObjectWriter, StoredObject

FILE_FIELD, CARD_FIELD = "file", "card"
_HEADER_SLACK = 64 * 1024  # boundaries and part headers on top of file + card
HEAD_BYTES = 9  # what ``open_sink`` sees of the file before choosing where it goes (format sniffing)
# ``open_sink(client file name, first HEAD_BYTES bytes or the whole file if shorter)``
SinkOpener = Callable[[str | None, bytes], ObjectWriter]


class _TooLarge(Exception):
    pass


def clean_filename(name: str | None) -> str | None:
    """The client's file name, for display only: no directories, no control characters."""
    if not name:
        return None
    base = "".join(ch for ch in name.replace("\\", "/").rsplit("/", 1)[-1] if ch.isprintable())
    return base[:255] or None


def storage_unavailable() -> ApiError:
    return ApiError(503, "storage_unavailable", "object storage is unreachable; nothing was stored, try again later",
                    {"Retry-After": "5"})


@dataclass
class ReceivedUpload:
    """A body that has been fully received: the file sits in ``path`` (caller deletes it), or,
    when a sink was given, is the committed object ``stored`` (caller deletes it if refused)."""

    path: Path | None
    sha256: str
    size_bytes: int
    filename: str | None
    card_text: str  # "" when the upload has no card (``require_card=False``)
    extra_fields: list[str] = field(default_factory=list)
    stored: StoredObject | None = None
    fields: dict[str, bytes] = field(default_factory=dict)  # every small field, the card included


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    buffer: bytearray = field(default_factory=bytearray)


class _Receiver:
    def __init__(self, tmp_dir: Path, max_file_bytes: int, max_field_bytes: int,
                 open_sink: SinkOpener | None = None) -> None:
        self.open_sink = open_sink
        self.sink: ObjectWriter | None = None
        self._head = bytearray()
        self.card_arrived = False  # set when the card field ends; receive_upload then checks it
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
            if self.open_sink is None:
                fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.tmp_dir)
                self.file_path = Path(tmp)
                self.file_handle = os.fdopen(fd, "wb")

    def _to_sink(self, chunk: bytes, last: bool = False) -> None:
        if self.sink is None:
            self._head += chunk
            if len(self._head) < HEAD_BYTES and not last:
                return
            assert self.open_sink is not None
            self.sink = self.open_sink(self.file_name, bytes(self._head[:HEAD_BYTES]))
            chunk, self._head = bytes(self._head), bytearray()
        self.sink.write(chunk)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self.part.size += len(chunk)
        if self.part.name == FILE_FIELD:
            if self.part.size > self.max_file_bytes:
                raise _TooLarge()
            if self.open_sink is not None:
                self._to_sink(chunk)
            else:
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
            if self.open_sink is not None:
                self._to_sink(b"", last=True)  # a file shorter than HEAD_BYTES (or empty) opens it now
            else:
                assert self.file_handle is not None
                self.file_handle.close()
                self.file_handle = None
            self.file_size = self.part.size
        elif self.part.name is not None:
            if self.part.name in self.fields:
                raise ApiError(422, "validation_error", f"form field {self.part.name!r} given more than once")
            self.fields[self.part.name] = bytes(self.part.buffer)
            if self.part.name == CARD_FIELD:
                self.card_arrived = True

    def on_end(self) -> None:
        self.ended = True

    def callbacks(self) -> dict:
        return {n: getattr(self, n) for n in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_part_data", "on_part_end", "on_end",
        )}

    def discard(self) -> None:
        if self.sink is not None:
            self.sink.abort()
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
    on_card: Callable[[bytes], Awaitable[None]] | None = None,
    open_sink: SinkOpener | None = None,
    require_card: bool = True,
    file_label: str = "the weights file",
) -> ReceivedUpload:
    """Stream ``file`` to disk and collect the small fields (``card`` among them); 4xx on anything
    wrong. ``on_card`` sees the card as soon as it has arrived (before the file, if sent first), and
    before the next chunk is read: a bad card it raises on stops the upload there. Without
    ``require_card`` a missing card is no error (``card_text`` is then empty)."""
    ctype, opts = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with fields 'file' and 'card'"
                       if require_card else "send multipart/form-data with a field 'file'")
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
    rx = _Receiver(tmp_dir, max_file_bytes, max_field_bytes, open_sink)

    async def card_check() -> None:
        if rx.card_arrived:
            rx.card_arrived = False
            if on_card is not None:
                await on_card(rx.fields[CARD_FIELD])
    try:
        parser = MultipartParser(boundary, rx.callbacks())  # type: ignore[arg-type]
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_body:
                    raise _TooLarge()
                if open_sink is not None:  # the sink sends parts over the network: not on the event loop
                    await run_in_threadpool(parser.write, chunk)
                else:
                    parser.write(chunk)
                await card_check()
            parser.finalize()
            await card_check()
        except _TooLarge:
            raise _too_large(max_file_bytes) from None
        except MultipartParseError as exc:
            raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
        except ClientDisconnect:
            raise ApiError(400, "bad_request", "client disconnected during upload") from None
        if not rx.ended:
            raise ApiError(400, "bad_request", "multipart body ended early (truncated upload)")
        if not rx.file_seen or (rx.file_path is None and rx.sink is None):
            raise ApiError(422, "validation_error", f"form field 'file' ({file_label}) is required")
        if CARD_FIELD not in rx.fields and require_card:
            raise ApiError(422, "validation_error", "form field 'card' (the model card JSON) is required")
        try:
            card_text = rx.fields[CARD_FIELD].decode("utf-8") if CARD_FIELD in rx.fields else ""
        except UnicodeDecodeError:
            raise ApiError(422, "invalid_card", "model card is not UTF-8 text") from None
        stored = await run_in_threadpool(rx.sink.commit) if rx.sink is not None else None
        return ReceivedUpload(
            stored=stored,
            path=rx.file_path,
            sha256=rx.hasher.hexdigest(),
            size_bytes=rx.file_size,
            filename=rx.file_name,
            card_text=card_text,
            extra_fields=sorted(set(rx.fields) - {CARD_FIELD}),
            fields=dict(rx.fields),
        )
    except BaseException:
        if rx.sink is not None:  # aborting a multipart upload is a request: off the loop, even if cancelled
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(rx.discard)
        else:
            rx.discard()
        raise
