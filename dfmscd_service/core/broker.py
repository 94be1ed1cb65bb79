"""The broker, in one place: the Celery app factory, the task name, transport options, sending a
job, the readiness ping and the embedded broker's purge. The API and the worker both import it.

Settings fit for hour-long GPU jobs: one task per process at a time (prefetch 1), late
acknowledgement so a crash redelivers, a visibility timeout longer than the longest job so a
healthy long run is never redelivered, a dedicated queue, and a fresh child process per job
(``worker_max_tasks_per_child=1``) so CUDA state and memory never leak from one job to the
next. The message carries only the job id; the row holds the rest.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import Celery
from sqlalchemy import create_engine, inspect, pool, text

from dfmscd_service.core.settings import Settings, get_settings

log = logging.getLogger("dfmscd.queue")

TASK_NAME = "dfmscd.distill"
EVALUATE_TASK_NAME = "dfmscd.evaluate"  # a finished job on a labelled set (worker/evaluator.py), same queue
TASKS_MODULE = "dfmscd_service.worker.tasks"  # named, not imported: the API never loads the worker
_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}

_lock = threading.Lock()
_apps: dict[tuple[str, str, str], Celery] = {}


class BrokerUnavailable(Exception):
    pass


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def is_sqla_url(url: str) -> bool:
    """kombu's SQLAlchemy transport (the embedded mode's server-less broker)."""
    return url.startswith(("sqla+", "sqlalchemy+"))


def sqla_database_url(url: str) -> str:
    return url.split("+", 1)[1]


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    if is_redis_url(url):
        opts: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_seconds}
        if settings.broker_key_prefix:
            opts["global_keyprefix"] = settings.broker_key_prefix
        return opts
    if is_sqla_url(url):
        # Options go to sqlalchemy.create_engine: wait for SQLite's lock rather than fail.
        return {"connect_args": {"timeout": 30}} if "sqlite" in url else {}
    return {}


def make_celery(settings: Settings) -> Celery:
    broker = settings.resolved_broker_url
    app = Celery("dfmscd", broker=broker, include=[TASKS_MODULE])
    embedded = is_sqla_url(broker)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_routes={TASK_NAME: {"queue": settings.queue_name}, EVALUATE_TASK_NAME: {"queue": settings.queue_name}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        worker_concurrency=1,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # The SQLAlchemy transport has no fanout exchange: no remote control / events there.
        worker_enable_remote_control=not embedded,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def get_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    key = (settings.resolved_broker_url, settings.broker_key_prefix, settings.queue_name)
    with _lock:
        if key not in _apps:
            _apps[key] = make_celery(settings)
        return _apps[key]


def _send(task: str, ident: str) -> None:
    app = get_celery_app()
    try:
        app.send_task(task, args=[ident], queue=app.conf.task_default_queue, retry=True, retry_policy=_RETRY)
    except Exception as exc:  # kombu raises many types (OperationalError, ConnectionError, ...)
        log.warning("could not enqueue %s %s: %s", task, ident, exc)
        raise BrokerUnavailable(str(exc)) from exc


def enqueue_job(job_id: str) -> None:
    """Publish one ``dfmscd.distill`` message; ``BrokerUnavailable`` if the broker cannot take it."""
    _send(TASK_NAME, job_id)


def enqueue_evaluation(evaluation_id: str) -> None:
    """Publish one ``dfmscd.evaluate`` message; ``BrokerUnavailable`` if the broker cannot take it."""
    _send(EVALUATE_TASK_NAME, evaluation_id)


def ping_broker(timeout: float = 2.0) -> None:
    """Raise if the broker cannot be reached (readiness probe): a real round trip, not a socket."""
    url = get_settings().resolved_broker_url
    if is_redis_url(url):
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    if is_sqla_url(url):
        engine = create_engine(sqla_database_url(url), poolclass=pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        return
    with get_celery_app().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def purge_delivered_messages(broker_url: str) -> int:
    """Delete the delivered (invisible) rows of a ``sqla+`` broker; 0 for any other broker.

    kombu's SQLAlchemy transport keeps delivered messages for ever (marked invisible) and never
    reads them again, so the embedded broker's file would only grow.
    """
    if not is_sqla_url(broker_url):
        return 0
    engine = create_engine(sqla_database_url(broker_url), connect_args={"timeout": 30} if "sqlite" in broker_url else {})
    try:
        if not inspect(engine).has_table("kombu_message"):
            return 0
        with engine.begin() as conn:
            return conn.execute(text("DELETE FROM kombu_message WHERE visible = :no"), {"no": False}).rowcount or 0
    finally:
        engine.dispose()
