import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "worker"))

from s3_kit import moto_s3, s3_bucket  # noqa: E402,F401  (fixtures)
from service_kit import (  # noqa: E402,F401  (fixtures)
    auth,
    client,
    pg_url,
    redis_prefix,
    service,
    teacher_file,
)
from worker_kit import pause_point  # noqa: E402,F401
