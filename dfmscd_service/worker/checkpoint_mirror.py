"""Run checkpoints in remote storage, so that a job resumes on any host.

The Distiller writes its checkpoint to the job's local scratch directory. With a bucket as
storage the worker hosts share nothing but the database, the broker and the bucket, so the
checkpoint is also uploaded (key ``core.storage_base.checkpoint_key``) each time the Distiller
reports one, and a new attempt downloads it before it starts. The upload runs as the first
callback, before the event is recorded: once a ``checkpoint`` event is in the database the
bucket holds that checkpoint. With local storage (one host) nothing is mirrored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from dfmscd_service.core.storage_base import Storage, checkpoint_key

log = logging.getLogger("dfmscd.worker")


class CheckpointMirror:
    """A Distiller callback uploading ``path`` after every checkpoint (unless ``lost()``)."""

    def __init__(self, storage: Storage, job_id: str, path: Path, lost: Callable[[], bool]) -> None:
        self.storage, self.key, self.path, self.lost = storage, checkpoint_key(job_id), path, lost

    @classmethod
    def for_run(cls, storage: Storage, job_id: str, path: Path, lost: Callable[[], bool]) -> "CheckpointMirror | None":
        """The mirror of a run on remote storage (its stored checkpoint fetched first), else None."""
        if not storage.remote:
            return None
        mirror = cls(storage, job_id, path, lost)
        mirror.fetch()
        return mirror

    def fetch(self) -> bool:
        """Replace the local checkpoint by the stored one, if any (the last one any host saved)."""
        if not self.storage.exists(self.key):
            return False
        tmp = self.path.with_name(self.path.name + ".download")
        try:
            self.storage.download(self.key, tmp)
            tmp.replace(self.path)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def __call__(self, event: Any) -> None:
        if event.kind != "checkpoint" or self.lost():  # a runner that lost its lease never overwrites
            return
        self.storage.put_file(self.key, self.path, move=False)


def discard_stored_checkpoint(storage: Storage, job_id: str) -> None:
    """Best effort: the job is over (and the bucket may be the reason it failed)."""
    try:
        storage.delete(checkpoint_key(job_id))
    except Exception as exc:  # noqa: BLE001
        log.warning("job %s: could not delete its stored checkpoint: %s", job_id, exc)
