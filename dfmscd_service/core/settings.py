"""Service settings, read from ``DFMSCD_*`` environment variables.

One object is shared by the API, the worker and the CLI so that ``dfmscd serve``, ``dfmscd keys
create`` and a standalone ``celery worker`` agree on where the database, broker and files are.
The defaults describe the embedded mode: SQLite and a SQLite-backed broker under ``DATA_DIR``.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3
DAY_S = 86_400


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DFMSCD_", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = Field(None, description="default: sqlite under data_dir")
    broker_url: str | None = Field(None, description="default: kombu SQLAlchemy transport on sqlite under data_dir")
    # Redis only: prefix for every broker key, so that several deployments (or test runs) can
    # share one Redis without seeing each other's queues.
    broker_key_prefix: str = ""
    queue_name: str = "distill"

    # Object storage. None: files under data_dir/storage (embedded default, one host).
    # ``s3://BUCKET/PREFIX``: an S3-compatible bucket shared by every API and worker host;
    # credentials and region come from the standard AWS_* variables (boto3 reads them).
    storage_url: str | None = Field(None, pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$",
                                    description="s3://BUCKET/PREFIX; default: local disk under data_dir")
    s3_endpoint_url: str | None = Field(None, description="MinIO or another S3-compatible server; default: AWS")
    s3_presign: bool = Field(False, description="downloads answer 307 to a short-lived presigned URL")
    s3_presign_seconds: int = Field(300, ge=1, le=7 * DAY_S)
    s3_part_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * GiB,
                               description="multipart part size; one part per upload is held in memory")
    s3_timeout_seconds: float = Field(30.0, gt=0, description="connect/read timeout of one S3 request")
    s3_max_attempts: int = Field(3, ge=1, le=20, description="tries per S3 request (botocore standard retries)")

    max_upload_bytes: int = Field(2 * GiB, ge=1)
    # An evaluation set's file (its pixels are capped apart: 200 MB and 100,000 images, dfmscd.evaluate).
    max_evaluation_set_bytes: int = Field(200 * 10**6, ge=1)
    max_card_bytes: int = Field(64 * 1024, ge=256)
    max_students: int = Field(16, ge=1, le=64)
    max_metadata_bytes: int = Field(16 * 1024, ge=2)
    max_job_seconds: float = Field(7 * DAY_S, gt=0, description="longest wall-clock budget a job may ask for")
    worker_gpus: int = Field(
        1, ge=0, le=64, description="GPUs each worker has: jobs asking for cuda:N with N >= this are refused (0: none)"
    )

    # Per-key limits (0 = unlimited).
    max_concurrent_jobs_per_key: int = Field(8, ge=0)
    max_storage_bytes_per_key: int = Field(200 * GiB, ge=0)
    # Request rate per key (dfmscd_service/api/ratelimit.py): a fixed window; 0 = unlimited. Counters are in
    # Redis (shared by every API process) when the broker is redis:// or rate_limit_redis_url
    # is set, otherwise in-process (embedded mode runs one API process).
    rate_limit_per_minute: int = Field(1200, ge=0)
    rate_limit_window_seconds: int = Field(60, ge=1, le=3600)
    rate_limit_redis_url: str | None = Field(None, description="default: the broker URL when it is redis://")

    # Worker leases: a running job's row carries an owner and an expiry that a heartbeat renews;
    # a job whose lease ran out belongs to a dead worker and is handed to another one.
    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    sweep_seconds: float = Field(30.0, gt=0, description="how often a worker looks for orphaned jobs")
    requeue_queued_after_seconds: float = Field(
        3600.0, gt=0, description="re-send the message of a job still queued after this long (lost message)"
    )
    cancel_poll_seconds: float = Field(0.5, ge=0)
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads in the worker; 0 = torch default")
    # The student report at a job's end times every file at batch 1 and 64 (median of this many
    # runs after one warm-up); 0 leaves latency out. Small: it runs after the budget, on the worker.
    export_latency_repeats: int = Field(3, ge=0, le=100)
    preload_torch: bool = Field(
        True, description="import torch and the engine in the worker's main process (never CUDA) so each job's child starts fast"
    )

    migrate_on_start: bool = True
    stale_temp_seconds: float = Field(
        600.0, ge=0, description="at start-up, delete temp files (uploads, atomic writes) untouched this long"
    )
    # Concurrency of the API process. Sync routes run on AnyIO's threadpool (``api_threads``
    # tokens); each thread holds at most one pooled connection, and only while it runs (see
    # dfmscd_service/api/http/routing.py), so a pool at least as large as the threadpool can never be exhausted by
    # requests waiting for a thread. ``db_pool_size`` None = api_threads + api_read_threads + 2 (the readiness probe
    # and the architectures' background fill).
    api_threads: int = Field(40, ge=1, le=1000)
    # The poll and the list pages run on threads of their own (dfmscd_service/api/reads/read_threads.py).
    api_read_threads: int = Field(2, ge=1, le=64)
    # ... answered on the event loop from whole cached answers while the database's change epoch
    # has not moved (dfmscd_service/api/reads/fast_reads.py); off: every such read takes the exact path.
    api_fast_reads: bool = Field(True, description="serve unchanged polls and list pages without a thread or a query")
    db_pool_size: int | None = Field(None, ge=1, le=1000)
    db_pool_timeout_seconds: float = Field(30.0, gt=0)
    # The API's torch work (teacher checks, student plans, zoo listing, exports) runs in this many
    # spawned child processes (dfmscd_service/api/services/torch_pool.py), so the web process never imports torch.
    api_torch_processes: int = Field(1, ge=1, le=64)
    api_torch_warm: bool = Field(True, description="start the torch processes with the API, not at the first upload")
    # Largest JSON request body (POST /v1/jobs); teacher uploads have their own caps above.
    max_json_body_bytes: int = Field(1024 * 1024, ge=1024)
    sse_poll_seconds: float = Field(0.5, gt=0)
    sse_keepalive_seconds: float = Field(15.0, gt=0)

    # Webhooks (dfmscd_service/core/webhooks.py, delivered by the worker: worker/webhooks.py).
    webhook_allow_private: bool = Field(
        False, description="allow endpoint URLs on loopback/private/link-local addresses (tests, closed networks)"
    )
    # Delay before each attempt (s); its length is the number of attempts. Standard Webhooks' schedule.
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0], min_length=1
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="per attempt: connect, write and read")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="how often the worker looks for due deliveries")
    # An endpoint is disabled when both hold: this many failed attempts in a row, over at least this long.
    webhook_disable_after_failures: int = Field(8, ge=1)
    webhook_disable_after_seconds: float = Field(DAY_S, ge=0)
    webhook_max_endpoints_per_key: int = Field(20, ge=1)

    @property
    def visibility_timeout_seconds(self) -> int:
        """Longer than the longest job, so the broker never redelivers a healthy long run."""
        return int(self.max_job_seconds + DAY_S)

    @cached_property  # read on every request (get_engine): resolving the path each time showed in profiles
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'dfmscd.sqlite').resolve()}"

    @cached_property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def s3_bucket_and_prefix(self) -> tuple[str, str]:
        """(bucket, prefix without slashes at either end) of ``storage_url``."""
        assert self.storage_url, "storage_url is not set"
        bucket, _, prefix = self.storage_url.removeprefix("s3://").partition("/")
        return bucket, prefix.strip("/")

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def job_dir(self, job_id: str) -> Path:
        """Scratch space of one job (checkpoints); not part of storage."""
        return self.data_dir / "jobs" / job_id

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.storage_dir, self.tmp_dir, self.data_dir / "jobs"):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return Settings()
