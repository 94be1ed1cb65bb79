import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))

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
from worker_kit import celery_worker, pause_point  # noqa: E402,F401
