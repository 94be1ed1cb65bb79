"""The tasks: ``dfmscd.distill(job_id)`` (dfmscd_service.worker.runner) and ``dfmscd.evaluate(evaluation_id)``
(dfmscd_service.worker.evaluator). All state is in the rows; a message carries only an id."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from dfmscd_service.core.broker import EVALUATE_TASK_NAME, TASK_NAME


# A database that is down (restarting) is not the job's fault: the message is retried with
# backoff; a job that was already running is resumed by the orphan sweep once its lease expires.
@shared_task(
    name=TASK_NAME, ignore_result=True, acks_late=True, reject_on_worker_lost=True,
    autoretry_for=(OperationalError,), retry_backoff=2, retry_backoff_max=60, retry_jitter=True, max_retries=200,
)
def distill(job_id: str) -> str:
    from dfmscd_service.worker.runner import run_job  # torch and the engine load here, in the child

    return run_job(job_id)


@shared_task(
    name=EVALUATE_TASK_NAME, ignore_result=True, acks_late=True, reject_on_worker_lost=True,
    autoretry_for=(OperationalError,), retry_backoff=2, retry_backoff_max=60, retry_jitter=True, max_retries=200,
)
def evaluate(evaluation_id: str) -> str:
    from dfmscd_service.worker.evaluator import run_evaluation  # torch loads here, in the child

    return run_evaluation(evaluation_id)
