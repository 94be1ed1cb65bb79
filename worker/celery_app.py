"""The Celery application and its queue settings, built from ``app.settings``.

Settings fit for hour-long GPU jobs: one task per process at a time (prefetch 1), late
acknowledgement so a crash redelivers, a visibility timeout longer than the longest job so a
healthy long run is never redelivered, a dedicated queue, and a fresh child process per job
(``worker_max_tasks_per_child=1``) so CUDA state and memory never leak from one job to the
next. CUDA is only touched inside that child. Use ``celery -A worker.celery_app worker -Q distill``.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery

from app.settings import Settings, get_settings

TASK_NAME = "dfmscd.distill"

_lock = threading.Lock()
_apps: dict[tuple[str, str, str], Celery] = {}


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        opts: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_seconds}
        if settings.broker_key_prefix:
            opts["global_keyprefix"] = settings.broker_key_prefix
        return opts
    if url.startswith(("sqla+", "sqlalchemy+")):
        # Options go to sqlalchemy.create_engine: wait for SQLite's lock rather than fail.
        return {"connect_args": {"timeout": 30}} if "sqlite" in url else {}
    return {}


def make_celery(settings: Settings) -> Celery:
    broker = settings.resolved_broker_url
    app = Celery("dfmscd", broker=broker, include=["worker.tasks"])
    embedded = broker.startswith(("sqla+", "sqlalchemy+"))
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_routes={TASK_NAME: {"queue": settings.queue_name}},
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


def __getattr__(name: str) -> Any:
    # `celery -A worker.celery_app` looks up `app`; build it lazily from the environment.
    if name in ("app", "celery"):
        from worker import signals  # noqa: F401  (connects worker start-up / child init hooks)

        return get_celery_app()
    raise AttributeError(name)
