"""Shared fixtures for the service tests (imported by tests/api and tests/worker conftests).

Real services only: a fresh, uniquely named PostgreSQL database per test session (dropped at
the end) and a unique Redis key prefix, so that parallel runs on one machine never collide.
With CI=true an unreachable PostgreSQL or Redis fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the editable install may not map top-level packages
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("DFMSCD_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DFMSCD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MAX_UPLOAD_BYTES = 2 * 1024 * 1024

# Small run settings for jobs executed by real workers in tests (2 shared CPU cores).
TINY_HYPERPARAMETERS = dict(
    synth_batch_size=16, kd_batch_size=16, kd_steps=2, latent_dim=8, generator_width=8,
    pool_capacity=256, checkpoint_every=1, device="cpu",
)


def require_service(name: str, check: Callable[[], Any]) -> None:
    try:
        check()
    except Exception as exc:  # noqa: BLE001
        msg = f"{name} is unreachable: {type(exc).__name__}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# --------------------------------------------------------------------------- services
@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    require_service("PostgreSQL", lambda: admin.connect().close())
    name = f"dfmscd_test_{secrets.token_hex(5)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from dfmscd_service.core.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def new_pg_database(tag: str) -> tuple[str, Callable[[], None]]:
    """A throw-away database (for migration tests); returns its URL and a drop function."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"dfmscd_test_{tag}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    require_service("Redis", client.ping)
    prefix = f"dfmscd-test-{secrets.token_hex(5)}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def service_env(data_dir: Path, pg: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {
        "DFMSCD_DATA_DIR": str(data_dir),
        "DFMSCD_DATABASE_URL": pg,
        "DFMSCD_BROKER_URL": REDIS_URL,
        "DFMSCD_BROKER_KEY_PREFIX": prefix,
        "DFMSCD_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "DFMSCD_LEASE_SECONDS": "4",
        "DFMSCD_HEARTBEAT_SECONDS": "1",
        "DFMSCD_SWEEP_SECONDS": "1",
        "DFMSCD_CANCEL_POLL_SECONDS": "0.2",
        "DFMSCD_SSE_POLL_SECONDS": "0.1",
        "DFMSCD_TORCH_THREADS": "1",
        "DFMSCD_MAX_CONCURRENT_JOBS_PER_KEY": "1000",  # the limit itself is tested with its own key
        "DFMSCD_RATE_LIMIT_PER_MINUTE": "100000",  # tested with small settings in tests/hardening/test_limits.py
        # Webhooks (tests/api/test_webhooks.py, tests/worker/test_webhook_delivery.py): a local
        # receiver, retries 0.2 s apart, an endpoint disabled at its 3rd failure in a row.
        "DFMSCD_WEBHOOK_ALLOW_PRIVATE": "true",
        "DFMSCD_WEBHOOK_RETRY_SCHEDULE": "[0, 0.2, 0.2, 0.2, 0.2]",
        "DFMSCD_WEBHOOK_POLL_SECONDS": "0.2",
        "DFMSCD_WEBHOOK_DISABLE_AFTER_FAILURES": "3",
        "DFMSCD_WEBHOOK_DISABLE_AFTER_SECONDS": "0",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_prefix: str) -> Iterator[dict[str, str]]:
    """Points dfmscd_service.core.settings at the test database, Redis prefix and a temp data dir."""
    from dfmscd_service.core.settings import get_settings

    env = service_env(tmp_path_factory.mktemp("data"), pg_url, redis_prefix)
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    get_settings.cache_clear()
    try:
        yield env
    finally:
        mp.undo()
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def client(service: dict[str, str]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from dfmscd_service.api.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def make_key(name: str = "test") -> str:
    from dfmscd_service.api.auth import create_api_key
    from dfmscd_service.core.db import session_scope

    with session_scope() as s:
        _row, secret = create_api_key(s, name)
    return secret


@pytest.fixture(scope="session")
def auth(service: dict[str, str], client: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('owner-a')}"}


@pytest.fixture(scope="session")
def other_auth(service: dict[str, str], client: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('owner-b')}"}


# --------------------------------------------------------------------------- teachers
CARD = {"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}


def make_teacher(path: Path, seed: int = 0) -> Path:
    """A resnet8 for 1x8x8 inputs with non-trivial BatchNorm statistics, saved as safetensors."""
    import torch
    from safetensors.torch import save_file

    from dfmscd.models import create_model

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=8)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 8, 8, generator=g) * 0.25 + 0.5)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


def upload_teacher(client: Any, headers: dict[str, str], path: Path, card: dict[str, Any] | None = None) -> Any:
    with open(path, "rb") as fh:
        return client.post(
            "/v1/teachers",
            headers=headers,
            files={"file": (path.name, fh, "application/octet-stream")},
            data={"card": json.dumps(card or CARD)},
        )


@pytest.fixture(scope="session")
def teacher(client: Any, auth: dict[str, str], teacher_file: Path) -> dict[str, Any]:
    r = upload_teacher(client, auth, teacher_file)
    assert r.status_code == 201, r.text
    return r.json()


def store_results_like_the_worker(job_id: str, teacher_card: dict[str, Any], png: bytes,
                                  seed: int | None = None) -> tuple[Any, Any]:
    """Store a resnet8 student and samples for a job as the worker does, and mark it succeeded.

    Returns (the stored student's ``Stored`` record, the module). ``seed`` fixes its weights.
    """
    import torch
    from sqlalchemy import update

    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.models import Job, JobStudent
    from dfmscd_service.core.storage import get_storage
    from dfmscd.io import ModelCard, save_model
    from dfmscd.models import create_model

    if seed is not None:
        torch.manual_seed(seed)
    card = ModelCard.model_validate(teacher_card)
    module = create_model("resnet8", num_classes=10, in_channels=1, image_size=8).eval()
    storage = get_storage()
    stored = storage.write(f"jobs/{job_id}/students/resnet8.t0.safetensors", lambda p: save_model(module, card, p))
    samples = storage.write(f"jobs/{job_id}/samples.t0.png", lambda p: p.write_bytes(png))
    with session_scope() as s:
        s.execute(update(JobStudent).where(JobStudent.job_id == job_id).values(
            status="succeeded", storage_key=stored.key, sha256=stored.sha256, size_bytes=stored.size_bytes,
            card=card.model_dump(mode="json")))
        s.execute(update(Job).where(Job.id == job_id).values(
            status="succeeded", progress=1.0, samples_key=samples.key, samples_sha256=samples.sha256))
    return stored, module


def job_body(teacher_id: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "teacher_id": teacher_id,
        "students": [{"architecture": "resnet8"}],
        "preset": "fast",
        "budget": {"epochs": 2},
    }
    body.update(over)
    return body


def assert_error(r: Any, status: int, code: str | None = None, contains: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    if contains is not None:
        assert contains in body["error"]["message"], body
    return body["error"]


# --------------------------------------------------------------------------- evaluation sets
def evaluation_images(n: int, seed: int = 0, side: int = 8) -> tuple[Any, Any]:
    """uint8 N x 1 x side x side pixels and labels in [0, 10) (CARD's classes), from a fixed seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 1, side, side), dtype=np.uint8), rng.integers(0, 10, size=n)


def write_evaluation_npz(path: Path, n: int = 40, seed: int = 0, **arrays: Any) -> Path:
    """A labelled .npz (``x``, ``y``) for CARD; ``arrays`` replace either."""
    import numpy as np

    x, y = evaluation_images(n, seed)
    np.savez(path, **{"x": x, "y": y, **arrays})
    return path


def write_evaluation_archive(path: Path, n: int = 40, seed: int = 0, members: dict[str, bytes] | None = None,
                             links: dict[str, str] | None = None) -> Path:
    """The images of ``write_evaluation_npz(n, seed)`` as a class-folder .tar.gz (``test/<label>/<i>.png``),
    plus raw ``members`` and symbolic ``links`` (name -> target) for hostile cases."""
    import io
    import tarfile

    from PIL import Image

    x, y = evaluation_images(n, seed)
    files: dict[str, bytes] = {}
    for i, (img, label) in enumerate(zip(x, y)):
        buffer = io.BytesIO()
        Image.fromarray(img[0]).save(buffer, format="PNG")
        files[f"test/{int(label)}/{i:04d}.png"] = buffer.getvalue()
    files.update(members or {})
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def upload_evaluation_set(client: Any, headers: dict[str, str], path: Path, teacher_id: str | None = None,
                          filename: str | None = None) -> Any:
    with open(path, "rb") as fh:
        return client.post("/v1/evaluation-sets", headers=headers,
                           files={"file": (filename or path.name, fh, "application/octet-stream")},
                           data={"teacher_id": teacher_id} if teacher_id else None)
