"""Finds jobs a dead worker left behind and sends them again (they resume from their checkpoint).

Runs in the worker's main process: once when the worker is ready and then every
``sweep_seconds``. The claim in ``dfmscd_service.worker.lease`` keeps a duplicate message harmless. In the
embedded mode it also empties the SQLite broker of delivered messages (``core.broker``).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import and_, or_

from dfmscd_service.core.broker import enqueue_evaluation, enqueue_job, purge_delivered_messages
from dfmscd_service.core.db import session_factory
from dfmscd_service.core.models import Job, JobStatus, utcnow
from dfmscd_service.core.settings import get_settings
from dfmscd_service.worker.lease import (
    evaluations_to_resend,
    mark_enqueued,
    mark_evaluation_enqueued,
    orphaned_job_ids,
    stale_queued_job_ids,
)

log = logging.getLogger("dfmscd.worker")


def sweep_once() -> list[str]:
    """Re-send orphaned and long-queued jobs and evaluations; returns the ids sent."""
    settings = get_settings()
    now = utcnow()
    sent: list[str] = []
    with session_factory()() as session:
        orphan_cond = and_(
            Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
            Job.lease_expires_at < now,
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < Job.lease_expires_at),
        )
        stale_before = now - timedelta(seconds=settings.requeue_queued_after_seconds)
        queued_cond = and_(Job.status == JobStatus.QUEUED, or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale_before))
        candidates = [(j, orphan_cond) for j in orphaned_job_ids(session, now)]
        candidates += [(j, queued_cond) for j in stale_queued_job_ids(session, stale_before)]
        for job_id, cond in candidates:
            if not mark_enqueued(session, job_id, now, cond):
                session.rollback()
                continue
            try:
                enqueue_job(job_id)
            except Exception as exc:  # noqa: BLE001 - broker down: try again next sweep
                session.rollback()
                log.warning("sweep: could not re-send job %s: %s", job_id, exc)
                continue
            session.commit()
            sent.append(job_id)
            log.info("sweep: re-sent job %s", job_id)
        for evaluation_id in evaluations_to_resend(session, now, stale_before):
            if not mark_evaluation_enqueued(session, evaluation_id, now, stale_before):
                session.rollback()
                continue
            try:
                enqueue_evaluation(evaluation_id)
            except Exception as exc:  # noqa: BLE001 - broker down: try again next sweep
                session.rollback()
                log.warning("sweep: could not re-send evaluation %s: %s", evaluation_id, exc)
                continue
            session.commit()
            sent.append(evaluation_id)
            log.info("sweep: re-sent evaluation %s", evaluation_id)
    return sent


class Sweeper(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="dfmscd-sweeper", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                sweep_once()
            except Exception:  # noqa: BLE001 - the DB may be restarting; keep sweeping
                log.exception("sweep failed")
            try:
                purged = purge_delivered_messages(get_settings().resolved_broker_url)
                if purged:
                    log.info("sweep: removed %d delivered broker messages", purged)
            except Exception:  # noqa: BLE001 - a busy SQLite file: try again next sweep
                log.warning("sweep: could not purge delivered broker messages", exc_info=True)
            if self.stopped.wait(self.interval):
                return

    def stop(self) -> None:
        self.stopped.set()
