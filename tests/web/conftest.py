"""Fixtures for the browser tests: the service fixtures (tests/api), a real Celery worker
(tests/worker) and a live uvicorn (tests/hardening), plus headless Chromium in browser_kit."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
for sub in ("api", "worker", "hardening", "web"):
    sys.path.insert(0, str(_TESTS / sub))

from browser_kit import browser, dashboard  # noqa: E402,F401  (fixtures)
from service_kit import (  # noqa: E402,F401  (fixtures)
    auth,
    client,
    other_auth,
    pg_url,
    redis_prefix,
    service,
    teacher,
    teacher_file,
)
import worker_kit  # noqa: E402

celery_worker = worker_kit.celery_worker
if hasattr(worker_kit, "pause_point"):  # the worker fixture's own dependency, where it has one
    pause_point = worker_kit.pause_point
