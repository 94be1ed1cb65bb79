"""The compose file cannot be run here (no Docker engine), so check what it promises by parsing it."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_the_services() -> None:
    assert set(_compose()["services"]) == {"api", "worker", "redis", "postgres", "minio", "minio-init"}


def test_worker_reserves_a_gpu_and_consumes_the_distill_queue() -> None:
    worker = _compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert "CUDA_VISIBLE_DEVICES" in worker["environment"]
    command = worker["command"]
    assert command[command.index("-Q") + 1] == "distill"
    assert command[command.index("--concurrency") + 1] == "1"


def test_api_and_worker_share_only_postgres_redis_and_the_bucket() -> None:
    services = _compose()["services"]
    minio = services["minio"]["environment"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["DFMSCD_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["DFMSCD_BROKER_URL"].startswith("redis://redis:")
        assert env["DFMSCD_STORAGE_URL"].startswith("s3://")
        assert env["DFMSCD_S3_ENDPOINT_URL"] == "http://minio:9000"
        # the credentials boto3 reads are MinIO's root user
        assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["api"]["environment"]["DFMSCD_STORAGE_URL"] == services["worker"]["environment"]["DFMSCD_STORAGE_URL"]
    # no shared volume: a worker (scaled to N, on any host) needs none
    assert "volumes" not in services["worker"]
    api_volumes = {v.split(":")[0] for v in services["api"].get("volumes", [])}
    others = {v.split(":")[0] for n, svc in services.items() if n != "api" for v in svc.get("volumes", [])}
    assert not api_volumes & others


def test_minio_init_creates_the_configured_bucket() -> None:
    services = _compose()["services"]
    bucket = services["api"]["environment"]["DFMSCD_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    script = " ".join(services["minio-init"]["entrypoint"])
    assert f"mc mb --ignore-existing local/{bucket}" in script and "http://minio:9000" in script
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "9000" in services["api"]["environment"]["DFMSCD_S3_ENDPOINT_URL"]


def test_compose_refers_to_modules_that_exist() -> None:
    services = _compose()["services"]
    api_target = services["api"]["command"][1]  # "module:attribute" for uvicorn
    module, _, attr = api_target.partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).exists()
    worker_app = services["worker"]["command"][services["worker"]["command"].index("-A") + 1]
    assert (ROOT / (worker_app.replace(".", "/") + ".py")).exists()
