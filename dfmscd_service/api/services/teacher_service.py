"""Uploading a teacher: the rules behind ``POST /v1/teachers``, apart from routing.

The body streams in under a size cap (to a temp file, or straight into remote storage); the card
is checked before the weights are read on; torch loads and builds the teacher in the torch pool,
never in the web process; the quota is checked early and again under the owner's lock at insert;
whatever fails leaves neither a row nor a stored object.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from dfmscd.io.card import ModelCard
from dfmscd_service.api.auth import Principal, lock_owner
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.services.quota import check_quota, precheck_quota
from dfmscd_service.api.services.teacher_validation import check_card, sniff_format, sniff_head, validate_teacher
from dfmscd_service.api.services.uploads import clean_filename, receive_upload, storage_unavailable
from dfmscd_service.core.db import session_factory
from dfmscd_service.core.models import Teacher, new_id
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.storage import get_storage
from dfmscd_service.core.storage_base import (
    ObjectWriter,
    Storage,
    StorageUnavailable,
    local_copy,
    teacher_key,
    teacher_prefix,
)


class _StreamedTeacher:
    """Remote storage: the upload streams straight to its final key, chosen from its first bytes."""

    def __init__(self, storage: Storage, teacher_id: str) -> None:
        self.storage, self.teacher_id, self.fmt = storage, teacher_id, ""

    def open(self, filename: str | None, head: bytes) -> ObjectWriter:
        self.fmt = sniff_head(head, filename)
        return self.storage.open_writer(teacher_key(self.teacher_id, self.fmt))


async def _validate_stored(storage: Storage, key: str, fmt: str, card: ModelCard, display_name: str | None) -> Any:
    """``validate_teacher`` on a temp copy downloaded from remote storage (removed afterwards)."""
    settings = get_settings()
    copy = local_copy(storage, key, settings.tmp_dir, ".safetensors" if fmt == "safetensors" else ".pt")
    path = await run_in_threadpool(copy.__enter__)
    try:
        return await validate_teacher(path, card, max(settings.max_upload_bytes, 1), display_name)
    finally:
        await run_in_threadpool(copy.__exit__, None, None, None)


async def upload_teacher(request: Request, principal: Principal) -> Teacher:
    """Receive, validate and store one teacher; returns its committed row."""
    settings = get_settings()
    checked: list[ModelCard] = []

    async def on_card(raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "invalid_card", "model card is not UTF-8 text") from None
        checked.append(await check_card(text))

    storage = get_storage()
    teacher_id = new_id("tch")
    streamed = _StreamedTeacher(storage, teacher_id) if storage.remote else None
    try:
        upload = await receive_upload(
            request, settings.tmp_dir, settings.max_upload_bytes, settings.max_card_bytes, on_card=on_card,
            open_sink=streamed.open if streamed is not None else None,
        )
    except StorageUnavailable:
        raise storage_unavailable() from None
    path: Path | None = upload.path
    kept = False  # a streamed upload is already stored: it stays only if its row is committed
    try:
        if upload.extra_fields:
            raise ApiError(422, "validation_error", f"unexpected form field(s): {', '.join(upload.extra_fields)}")
        if upload.size_bytes == 0:
            raise ApiError(422, "invalid_checkpoint", "the weights file is empty")
        card = checked[0] if checked else await check_card(upload.card_text)
        if upload.path is not None:
            fmt = sniff_format(upload.path, upload.filename)
            typed = upload.path.with_name(upload.path.stem + (".safetensors" if fmt == "safetensors" else ".pt"))
            os.replace(upload.path, typed)
            path = typed
            # torch loads and builds it in the torch pool, never in this process (dfmscd_service/api/services/torch_pool.py)
            validation = await validate_teacher(typed, card, max(settings.max_upload_bytes, 1), clean_filename(upload.filename))
        else:  # streamed to remote storage: validated from a downloaded temp copy
            assert upload.stored is not None and streamed is not None
            fmt = streamed.fmt
            validation = await _validate_stored(storage, upload.stored.key, fmt, card, clean_filename(upload.filename))
        await run_in_threadpool(precheck_quota, principal.owner_id, upload.size_bytes)

        key = teacher_key(teacher_id, fmt)
        if upload.stored is None:
            stored = await run_in_threadpool(storage.put_file, key, typed)
        else:
            stored = upload.stored
        path = None  # moved into storage
        if stored.sha256 != upload.sha256:  # the file changed under us: refuse rather than lie
            storage.delete_prefix(teacher_prefix(teacher_id))
            raise ApiError(500, "internal_error", "stored file does not match the upload")
        row = Teacher(
            id=teacher_id,
            owner_id=principal.owner_id,
            sha256=upload.sha256,
            size_bytes=upload.size_bytes,
            file_format=fmt,
            storage_key=key,
            card=validation.card,
            filename=clean_filename(upload.filename),
            warnings=list(validation.warnings) or None,
        )

        def _insert() -> Teacher:
            with session_factory()() as session:
                try:
                    if get_settings().max_storage_bytes_per_key:
                        # Simultaneous uploads all pass the early check; under the owner's lock
                        # exactly those that fit are committed (the lock ends with the commit).
                        lock_owner(session, principal.owner_id)
                        check_quota(session, principal.owner_id, upload.size_bytes)
                    session.add(row)
                    session.commit()
                except BaseException:
                    session.rollback()
                    storage.delete_prefix(teacher_prefix(teacher_id))  # this upload's own folder
                    raise
                return row

        row = await run_in_threadpool(_insert)
        kept = True
        return row
    except StorageUnavailable:
        raise storage_unavailable() from None
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
        if upload.stored is not None and not kept:
            try:
                await run_in_threadpool(storage.delete_prefix, teacher_prefix(teacher_id))
            except StorageUnavailable:  # the object is not referenced by any row: harmless debris
                pass
