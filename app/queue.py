"""Sending jobs to the broker. The message carries only the job id; the row holds the rest."""

from __future__ import annotations

import logging

log = logging.getLogger("dfmscd.queue")

_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class BrokerUnavailable(Exception):
    pass


def enqueue_job(job_id: str) -> None:
    """Publish one ``dfmscd.distill`` message; ``BrokerUnavailable`` if the broker cannot take it."""
    from worker.celery_app import TASK_NAME, get_celery_app

    app = get_celery_app()
    try:
        app.send_task(
            TASK_NAME, args=[job_id], queue=app.conf.task_default_queue, retry=True, retry_policy=_RETRY
        )
    except Exception as exc:  # kombu raises many types (OperationalError, ConnectionError, ...)
        log.warning("could not enqueue job %s: %s", job_id, exc)
        raise BrokerUnavailable(str(exc)) from exc


def ping_broker(timeout: float = 2.0) -> None:
    """Raise if the broker cannot be reached (readiness probe): a real round trip, not a socket."""
    from app.settings import get_settings

    url = get_settings().resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    if url.startswith(("sqla+", "sqlalchemy+")):
        from sqlalchemy import create_engine, pool, text

        engine = create_engine(url.split("+", 1)[1], poolclass=pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        return
    from worker.celery_app import get_celery_app

    with get_celery_app().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
