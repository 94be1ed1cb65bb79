"""Evaluation sets: labelled images an owner uploads to report accuracy on (never to train or
calibrate on), and their check against a model card when a job or an evaluation uses them.

An upload streams in like a teacher (``uploads.receive_upload``: capped at
``DFMSCD_MAX_EVALUATION_SET_BYTES``, to a temp file or straight into the bucket), is read whole in
the torch pool (``torch_checks.check_evaluation_set``: hostile archives, too many images or
pixels, unreadable files are refused with the library's one line), and counts against the
owner's storage quota. With the optional form field ``teacher_id`` it is also checked against that
teacher's card at upload; otherwise at first use. Whatever fails leaves neither a row nor a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import Request
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from dfmscd_service.api.auth import Principal, lock_owner
from dfmscd_service.api.deps import get_owned_teacher
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.services import torch_checks, torch_pool
from dfmscd_service.api.services.quota import check_quota, precheck_quota
from dfmscd_service.api.services.torch_checks import Refusal
from dfmscd_service.api.services.uploads import clean_filename, receive_upload, storage_unavailable
from dfmscd_service.core.db import session_factory
from dfmscd_service.core.models import ACTIVE_STATUSES, Evaluation, EvaluationSet, Job, JobStatus, new_id
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.storage import get_storage
from dfmscd_service.core.storage_base import (
    ObjectWriter,
    Storage,
    StorageUnavailable,
    evaluation_set_key,
    evaluation_set_prefix,
    local_copy,
)

TEACHER_FIELD = "teacher_id"
# By the file's name, as the library reads it (dfmscd.evaluate): .tgz is stored as tar.gz.
SUFFIXES = ((".tar.gz", "tar.gz"), (".tgz", "tar.gz"), (".tar", "tar"), (".zip", "zip"), (".npz", "npz"))


def set_format(filename: str | None) -> str:
    """npz, tar, tar.gz or zip from the client's file name; 422 for anything else."""
    name = (filename or "").lower()
    for suffix, fmt in SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise ApiError(422, "invalid_evaluation_set", f"evaluation set {clean_filename(filename) or '(no file name)'!r}: "
                   "send a .npz (arrays x and y) or a class-folder archive (.tar, .tar.gz, .tgz, .zip), named so")


def _refused(result: dict[str, Any] | Refusal) -> dict[str, Any]:
    if isinstance(result, Refusal):
        raise ApiError(422, result.code, result.message)
    return result


def _fits_key(card: dict[str, Any]) -> str:
    """What decides whether a set fits a card: shape, classes (mean/std only scale the pixels)."""
    return json.dumps([card.get("input_shape"), card.get("num_classes"), card.get("class_names")], sort_keys=True)


def check_fits(session: Session, evaluation_set: EvaluationSet, card: dict[str, Any]) -> None:
    """The set against ``card`` in the torch pool (422 naming the expected shape, or the labels out of
    range); remembered on the set, so a set is read once per kind of card. From a worker thread."""
    key = _fits_key(card)
    if key in (evaluation_set.summary or {}).get("fits", []):
        return
    settings = get_settings()
    storage = get_storage()
    try:
        with local_copy(storage, evaluation_set.storage_key, settings.tmp_dir, "." + evaluation_set.file_format) as path:
            _refused(torch_pool.call(torch_checks.check_evaluation_set, str(path), card, evaluation_set.filename))
    except FileNotFoundError:
        raise ApiError(409, "file_missing", f"evaluation set {evaluation_set.id!r}: its file is missing from storage") from None
    except StorageUnavailable:
        raise storage_unavailable() from None
    summary = dict(evaluation_set.summary or {})
    summary["fits"] = [*summary.get("fits", []), key]
    evaluation_set.summary = summary
    session.commit()


class _StreamedSet:
    """Remote storage: the upload streams straight to its final key, named from the client's file name."""

    def __init__(self, storage: Storage, set_id: str) -> None:
        self.storage, self.set_id, self.fmt = storage, set_id, ""

    def open(self, filename: str | None, head: bytes) -> ObjectWriter:
        self.fmt = set_format(filename)
        return self.storage.open_writer(evaluation_set_key(self.set_id, self.fmt))


def _teacher_card(principal: Principal, raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    teacher_id = raw.decode("utf-8", "replace").strip()
    with session_factory()() as session:
        return dict(get_owned_teacher(session, principal, teacher_id).card)


async def upload_evaluation_set(request: Request, principal: Principal) -> EvaluationSet:
    """Receive, check and store one evaluation set; returns its committed row."""
    settings = get_settings()
    storage = get_storage()
    set_id = new_id("evs")
    streamed = _StreamedSet(storage, set_id) if storage.remote else None
    try:
        upload = await receive_upload(request, settings.tmp_dir, settings.max_evaluation_set_bytes, settings.max_card_bytes,
                                      open_sink=streamed.open if streamed is not None else None, require_card=False,
                                      file_label="the evaluation set")
    except StorageUnavailable:
        raise storage_unavailable() from None
    path: Path | None = upload.path
    kept = False
    try:
        unexpected = sorted(set(upload.fields) - {TEACHER_FIELD})
        if unexpected:
            raise ApiError(422, "validation_error", f"unexpected form field(s): {', '.join(unexpected)}; "
                           f"send 'file' and optionally '{TEACHER_FIELD}'")
        if upload.size_bytes == 0:
            raise ApiError(422, "invalid_evaluation_set", "the evaluation set's file is empty")
        card = await run_in_threadpool(_teacher_card, principal, upload.fields.get(TEACHER_FIELD))
        display = clean_filename(upload.filename)
        if upload.path is not None:
            fmt = set_format(upload.filename)
            typed = upload.path.with_name(upload.path.stem + "." + fmt)
            os.replace(upload.path, typed)
            path = typed
            summary = _refused(await torch_pool.run(torch_checks.check_evaluation_set, str(typed), card, display))
        else:  # streamed into the bucket: checked on a downloaded temp copy
            assert upload.stored is not None and streamed is not None
            fmt = streamed.fmt
            copy = local_copy(storage, upload.stored.key, settings.tmp_dir, "." + fmt)
            local = await run_in_threadpool(copy.__enter__)
            try:
                summary = _refused(await torch_pool.run(torch_checks.check_evaluation_set, str(local), card, display))
            finally:
                await run_in_threadpool(copy.__exit__, None, None, None)
        if card is not None:
            summary["fits"] = [_fits_key(card)]
        await run_in_threadpool(precheck_quota, principal.owner_id, upload.size_bytes)
        key = evaluation_set_key(set_id, fmt)
        stored = upload.stored if upload.stored is not None else await run_in_threadpool(storage.put_file, key, path)
        path = None  # moved into storage
        row = EvaluationSet(id=set_id, owner_id=principal.owner_id, sha256=upload.sha256, size_bytes=upload.size_bytes,
                            file_format=fmt, storage_key=stored.key, filename=display, summary=summary)

        def _insert() -> EvaluationSet:
            with session_factory()() as session:
                try:
                    if get_settings().max_storage_bytes_per_key:
                        lock_owner(session, principal.owner_id)  # exactly the uploads that fit are committed
                        check_quota(session, principal.owner_id, upload.size_bytes)
                    session.add(row)
                    session.commit()
                except BaseException:
                    session.rollback()
                    storage.delete_prefix(evaluation_set_prefix(set_id))
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
                await run_in_threadpool(storage.delete_prefix, evaluation_set_prefix(set_id))
            except StorageUnavailable:  # unreferenced by any row: harmless debris
                pass


def delete_evaluation_set(session: Session, evaluation_set: EvaluationSet) -> None:
    """Delete the set, its evaluations and its file; 409 while an active job or a pending evaluation uses it."""
    active_jobs = session.scalar(select(func.count()).select_from(Job).where(
        Job.evaluation_set_id == evaluation_set.id, Job.status.in_(ACTIVE_STATUSES))) or 0
    pending = session.scalar(select(func.count()).select_from(Evaluation).where(
        Evaluation.evaluation_set_id == evaluation_set.id,
        Evaluation.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))) or 0
    if active_jobs or pending:
        raise ApiError(409, "evaluation_set_in_use", f"evaluation set {evaluation_set.id!r} is used by {active_jobs} "
                       f"active job(s) and {pending} evaluation(s) still to run")
    # Explicitly (no foreign key): the UPDATE also moves each job's updated_at, the version its cached answer is checked against.
    session.execute(update(Job).where(Job.evaluation_set_id == evaluation_set.id).values(evaluation_set_id=None))
    session.delete(evaluation_set)  # its evaluations go with it (ON DELETE CASCADE)
    session.commit()
    get_storage().delete_prefix(evaluation_set_prefix(evaluation_set.id))
