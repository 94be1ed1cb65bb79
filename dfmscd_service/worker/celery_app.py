"""The ``celery -A dfmscd_service.worker.celery_app worker -Q distill`` target.

The app itself is built by ``dfmscd_service.core.broker`` (shared with the API, which sends
jobs); this module adds the worker's process hooks. CUDA is only touched inside the job's child.
"""

from __future__ import annotations

from typing import Any

from dfmscd_service.core.broker import get_celery_app
from dfmscd_service.worker import signals  # noqa: F401  (connects worker start-up / child init hooks)


def __getattr__(name: str) -> Any:
    # `celery -A` looks up `app`; build it lazily, from the environment the worker started with.
    if name in ("app", "celery"):
        return get_celery_app()
    raise AttributeError(name)
