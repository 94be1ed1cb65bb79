"""The client without the dfmscd service: what it imports, how it shapes requests, and its retry
and checksum behaviour against a real scripted HTTP server (tests/client/scripted_server.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from dfmscd.client import ChecksumMismatchError, Client, DfmscdConnectionError, RetryPolicy, budget_body, student_body
from dfmscd.client import errors as E
from dfmscd.client.transport import parse_retry_after

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_server import DROP, Reply, scripted_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
JOB = {"id": "job_" + "a" * 28, "status": "queued", "students": [], "progress": 0.0, "epoch": 0}


class Sleeps(list):
    """Records the waits the client asks for instead of sleeping (the test never waits)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _client(url: str, sleeps: Sleeps, attempts: int = 4) -> Client:
    return Client(url, "dfk_test", retry=RetryPolicy(attempts=attempts, backoff=0.25, jitter=0.0, sleep=sleeps),
                  progress=False)


def test_importing_the_client_loads_no_torch_and_no_service_packages() -> None:
    code = ("import sys, dfmscd.client; "
            "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'torchvision', 'timm', 'fastapi', 'starlette', 'sqlalchemy', 'celery', 'kombu', "
            "'dfmscd_service', 'app', 'worker', 'numpy', 'safetensors'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    assert "dfmscd.client" in subprocess.run(
        [sys.executable, "-c", "import sys, dfmscd.client; print(' '.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120).stdout


def test_url_and_key_fall_back_to_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DFMSCD_API_URL", "http://example.invalid:9/")
    monkeypatch.setenv("DFMSCD_API_KEY", "dfk_env")
    with Client() as c:
        assert c.base_url == "http://example.invalid:9" and c.api_key == "dfk_env"
        assert c._http.headers["authorization"] == "Bearer dfk_env"
    with Client("http://other:1", "dfk_arg") as c:
        assert c.base_url == "http://other:1" and c.api_key == "dfk_arg"


@pytest.mark.parametrize("given, body", [
    ("300s", {"seconds": 300.0}), ("5m", {"seconds": 300.0}), ("2h", {"seconds": 7200.0}), ("1.5min", {"seconds": 90.0}),
    ("40e", {"epochs": 40}), ("3epochs", {"epochs": 3}), (" 7E ", {"epochs": 7}), ("90 minutes", {"seconds": 5400.0}),
    ({"epochs": 2}, {"epochs": 2}), (timedelta(minutes=2), {"seconds": 120.0}), (None, None),
])
def test_budget_forms(given, body) -> None:
    assert budget_body(given) == body


@pytest.mark.parametrize("bad", [300, 2.5, "300", "abc", "5x", "e", "2.5e", "0s"])
def test_ambiguous_or_bad_budgets_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        budget_body(bad)


def test_budget_and_student_objects_from_the_library_are_accepted() -> None:
    from dfmscd.config import Budget

    assert budget_body(Budget(epochs=3)) == {"epochs": 3}
    assert budget_body(Budget.parse("5m")) == {"seconds": 300.0}

    class Spec:  # duck-typed like dfmscd.engine.StudentSpec
        architecture, name, arch_kwargs = "wrn_16_1", "w", {"dropout": 0.1}

    assert student_body(Spec()) == {"architecture": "wrn_16_1", "name": "w", "arch_kwargs": {"dropout": 0.1}}
    assert student_body("resnet8") == {"architecture": "resnet8"}
    assert student_body({"name": "vgg8", "arch_kwargs": {"a": 1}}) == {"architecture": "vgg8", "arch_kwargs": {"a": 1}}
    assert student_body({"architecture": "vgg8", "name": "v"}) == {"architecture": "vgg8", "name": "v"}
    with pytest.raises(ValueError):
        student_body({"arch_kwargs": {}})
    with pytest.raises(TypeError):
        student_body(8)


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


def test_429_is_retried_after_retry_after_then_succeeds_with_the_same_idempotency_key() -> None:
    sleeps = Sleeps()
    with scripted_server() as (url, script):
        script.add("POST", "/v1/jobs",
                   Reply(429, {"error": {"code": "rate_limited", "message": "slow down"}}, {"Retry-After": "7"}),
                   Reply(503, {"error": {"code": "broker_unavailable", "message": "later"}}),
                   DROP,
                   Reply(202, JOB))
        with _client(url, sleeps) as c:
            job = c.create_job("tch_" + "b" * 28, ["resnet8"], preset="fast", budget="2e")
    assert job.id == JOB["id"] and job.status == "queued"
    posts = [s for s in script.seen if s.method == "POST"]
    assert len(posts) == 4
    keys = {s.headers["idempotency-key"] for s in posts}
    assert len(keys) == 1 and len(keys.pop()) == 36  # one uuid4 for the call and all its retries
    assert sleeps[0] == 7.0  # Retry-After honoured
    assert sleeps[1:] == [0.5, 1.0]  # then exponential backoff (no jitter here)
    assert json.loads(posts[0].body) == {"teacher_id": "tch_" + "b" * 28, "students": [{"architecture": "resnet8"}],
                                         "preset": "fast", "budget": {"epochs": 2}}


def test_two_calls_send_two_different_idempotency_keys_unless_one_is_given() -> None:
    with scripted_server() as (url, script):
        script.add("POST", "/v1/jobs", Reply(202, JOB))
        with _client(url, Sleeps()) as c:
            c.create_job("tch_x", ["resnet8"])
            c.create_job("tch_x", ["resnet8"])
            c.create_job("tch_x", ["resnet8"], idempotency_key="mine")
    keys = [s.headers["idempotency-key"] for s in script.seen]
    assert keys[0] != keys[1] and keys[2] == "mine"


def test_retries_are_bounded_and_the_last_answer_is_raised() -> None:
    sleeps = Sleeps()
    with scripted_server() as (url, script):
        script.add("GET", "/v1/jobs/job_x", Reply(502, b"<html>bad gateway</html>", {"Content-Type": "text/html"}))
        with _client(url, sleeps, attempts=3) as c, pytest.raises(E.DfmscdAPIError) as info:
            c.get_job("job_x")
    assert len(script.seen) == 3 and len(sleeps) == 2
    assert info.value.status_code == 502 and "bad gateway" in info.value.message


def test_a_too_long_retry_after_is_not_waited_for() -> None:
    sleeps = Sleeps()
    with scripted_server() as (url, script):
        script.add("GET", "/v1/jobs/job_x",
                   Reply(429, {"error": {"code": "rate_limited", "message": "m"}}, {"Retry-After": "3600"}))
        with _client(url, sleeps) as c, pytest.raises(E.RateLimitedError) as info:
            c.get_job("job_x")
    assert len(script.seen) == 1 and sleeps == []
    assert info.value.retry_after == 3600.0


@pytest.mark.parametrize("status, code, cls", [
    (400, "bad_request", E.BadRequestError), (404, "not_found", E.NotFoundError),
    (409, "job_finished", E.JobFinishedError), (422, "invalid_budget", E.InvalidBudgetError),
    (422, "validation_error", E.InvalidRequestError), (500, "internal_error", E.InternalServerError),
    (404, "some_new_code", E.NotFoundError), (418, "teapot", E.DfmscdAPIError),
])
def test_other_errors_are_not_retried_and_map_to_their_class(status, code, cls) -> None:
    sleeps = Sleeps()
    with scripted_server() as (url, script):
        script.add("GET", "/v1/jobs/job_x", Reply(status, {"error": {"code": code, "message": "nope"}}))
        with _client(url, sleeps) as c, pytest.raises(E.DfmscdAPIError) as info:
            c.get_job("job_x")
    assert type(info.value) is cls
    assert (info.value.status_code, info.value.code, info.value.message) == (status, code, "nope")
    assert len(script.seen) == 1 and sleeps == []


def test_an_upload_is_not_resent_after_a_dropped_connection(tmp_path) -> None:
    weights = tmp_path / "t.safetensors"
    weights.write_bytes(b"x" * 1000)
    with scripted_server() as (url, script):
        script.add("POST", "/v1/teachers", DROP)
        with _client(url, Sleeps()) as c, pytest.raises(DfmscdConnectionError):
            c.upload_teacher(weights, {"architecture": "resnet8"})
    assert len(script.seen) == 1  # the service may have stored it: a retry could make two teachers


def test_an_upload_is_retried_on_429_with_the_whole_file_again(tmp_path) -> None:
    weights = tmp_path / "t.safetensors"
    weights.write_bytes(bytes(range(256)) * 10)
    teacher = {"id": "tch_" + "c" * 28, "sha256": "s", "size_bytes": 2560, "file_format": "safetensors",
               "filename": "t.safetensors", "card": {}, "created_at": "2026-01-01T00:00:00Z"}
    with scripted_server() as (url, script):
        script.add("POST", "/v1/teachers",
                   Reply(429, {"error": {"code": "rate_limited", "message": "m"}}, {"Retry-After": "1"}),
                   Reply(201, teacher))
        with _client(url, Sleeps()) as c:
            t = c.upload_teacher(weights, {"architecture": "resnet8"})
    assert t.id == teacher["id"]
    assert len(script.seen) == 2
    assert all(weights.read_bytes() in s.body for s in script.seen)


def test_connection_refused_is_retried_then_a_connection_error() -> None:
    sleeps = Sleeps()
    with scripted_server() as (url, _script):
        pass  # the port is closed now
    with _client(url, sleeps, attempts=3) as c, pytest.raises(DfmscdConnectionError):
        c.get_job("job_x")
    assert len(sleeps) == 2


def test_a_download_whose_bytes_do_not_match_the_etag_is_refused_and_nothing_is_written(tmp_path) -> None:
    data = b"weights" * 100
    wrong = hashlib.sha256(b"something else").hexdigest()
    with scripted_server() as (url, script):
        script.add("GET", "/v1/jobs/job_x/students/s", Reply(200, {"name": "s", "architecture": "resnet8",
                                                                   "sha256": wrong}))
        script.add("GET", "/v1/jobs/job_x/students/s/weights",
                   Reply(200, data, {"ETag": f'"{wrong}"', "Content-Type": "application/octet-stream"}))
        with _client(url, Sleeps()) as c, pytest.raises(ChecksumMismatchError) as info:
            c.download_student("job_x", "s", tmp_path / "s.safetensors")
    assert info.value.expected == wrong and info.value.actual == hashlib.sha256(data).hexdigest()
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part
