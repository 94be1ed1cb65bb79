"""The compose file cannot be run here (no Docker engine), so check what it promises by parsing it."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_the_four_services() -> None:
    assert set(_compose()["services"]) == {"api", "worker", "redis", "postgres"}


def test_worker_reserves_a_gpu_and_consumes_the_distill_queue() -> None:
    worker = _compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert "CUDA_VISIBLE_DEVICES" in worker["environment"]
    command = worker["command"]
    assert command[command.index("-Q") + 1] == "distill"
    assert command[command.index("--concurrency") + 1] == "1"


def test_api_and_worker_share_data_and_point_at_postgres_and_redis() -> None:
    services = _compose()["services"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["DFMSCD_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["DFMSCD_BROKER_URL"].startswith("redis://redis:")
        assert any(v.split(":")[1] == env["DFMSCD_DATA_DIR"] for v in services[name]["volumes"])


def test_compose_refers_to_modules_that_exist() -> None:
    services = _compose()["services"]
    api_target = services["api"]["command"][1]  # "module:attribute" for uvicorn
    module, _, attr = api_target.partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).exists()
    worker_app = services["worker"]["command"][services["worker"]["command"].index("-A") + 1]
    assert (ROOT / (worker_app.replace(".", "/") + ".py")).exists()
