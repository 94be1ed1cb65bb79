"""The one task: ``dfmscd.distill(job_id)``. All state is in the job row; see dfmscd_service.worker.runner."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from dfmscd_service.core.broker import TASK_NAME


# A database that is down (restarting) is not the job's fault: the message is retried with
# backoff; a job that was already running is resumed by the orphan sweep once its lease expires.
@shared_task(
    name=TASK_NAME, ignore_result=True, acks_late=True, reject_on_worker_lost=True,
    autoretry_for=(OperationalError,), retry_backoff=2, retry_backoff_max=60, retry_jitter=True, max_retries=200,
)
def distill(job_id: str) -> str:
    from dfmscd_service.worker.runner import run_job  # torch and the engine load here, in the child

    return run_job(job_id)
