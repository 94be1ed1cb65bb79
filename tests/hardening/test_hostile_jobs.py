"""Hostile and broken job requests through the real HTTP API (POST /v1/jobs and the job routes).

Each refused request gets a 4xx with the standard error body and a precise message, and no job
row is written. Cases already in tests/dfmscd_service/api/test_jobs.py (0 and 17 students, duplicate names,
`../../etc/passwd` and `naïve` as names, unknown architecture, negative lr_s, temperature 0,
budget 0 / 10 years in seconds, 20 kB metadata, NaN metadata, one malformed body) are not
repeated here.
"""

from __future__ import annotations

import json

import pytest
from hardening_kit import settings_override
from service_kit import assert_error, job_body
from sqlalchemy import func, select

from dfmscd_service.core.db import session_scope
from dfmscd_service.core.models import Job


def _job_count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def _students(*names: str) -> list[dict]:
    return [{"architecture": "resnet8", "name": n} for n in names]


BODY_CASES = [
    ("50-students", dict(students=_students(*(f"s{i}" for i in range(50)))), 422, "validation_error",
     "between 1 and 16 students, got 50"),
    ("duplicate-by-default-name", dict(students=[{"architecture": "resnet8"}, {"architecture": "resnet8", "name": "resnet8"}]),
     422, "validation_error", "duplicate student name 'resnet8'"),
    ("name-backslash-traversal", dict(students=_students("..\\..\\windows")), 422, "validation_error", "not a valid name"),
    ("name-dotdot", dict(students=_students("..")), 422, "validation_error", "not a valid name"),
    ("name-slash", dict(students=_students("a/b")), 422, "validation_error", "not a valid name"),
    ("name-empty", dict(students=_students("")), 422, "validation_error", "not a valid name"),
    ("name-nul", dict(students=_students("a\x00b")), 422, "validation_error", "not a valid name"),
    ("name-rtl-override", dict(students=_students("evil\u202egnp.exe")), 422, "validation_error", "not a valid name"),
    ("name-emoji", dict(students=_students("\U0001f600")), 422, "validation_error", "not a valid name"),
    ("name-fullwidth-dots", dict(students=_students("\uff0e\uff0e\uff0fetc")), 422, "validation_error", "not a valid name"),
    ("architecture-traversal", dict(students=[{"architecture": "../../etc/passwd"}]), 422, "unknown_architecture",
     "unknown architecture '../../etc/passwd'"),
    ("architecture-dotted-import", dict(students=[{"architecture": "os.system"}]), 422, "unknown_architecture",
     "'os.system'"),
    ("architecture-empty", dict(students=[{"architecture": ""}]), 422, "validation_error", "architecture"),
    ("architecture-huge", dict(students=[{"architecture": "x" * 10_000}]), 422, "validation_error", "architecture"),
    ("arch-kwargs-object", dict(students=[{"architecture": "resnet8", "arch_kwargs": {"w": {"a": 1}}}]), 422,
     "validation_error", "arch_kwargs"),
    ("negative-lr-g", dict(hyperparameters={"lr_g": -0.1}), 422, "invalid_config", "lr_g"),
    ("temperature-negative", dict(hyperparameters={"temperature": -1}), 422, "invalid_config", "temperature"),
    ("hyperparameter-wrong-type", dict(hyperparameters={"lr_s": {"a": 1}}), 422, "invalid_config", "lr_s"),
    ("hyperparameter-string", dict(hyperparameters={"kd_steps": "ten"}), 422, "invalid_config", "kd_steps"),
    ("device-cuda-99", dict(hyperparameters={"device": "cuda:99"}), 422, "invalid_config",
     "'cuda:99' does not exist; the workers have 1 GPU(s), cuda:0 to cuda:0"),
    ("device-unknown", dict(hyperparameters={"device": "tpu"}), 422, "invalid_config", "device"),
    ("seed-over-uint32", dict(seed=2**70), 422, "invalid_config", "seed"),
    ("seed-negative", dict(seed=-1), 422, "invalid_config", "seed"),
    ("budget-epochs-huge", dict(budget={"epochs": 10**30}), 422, "invalid_budget", "budget.epochs"),
    ("budget-epochs-negative", dict(budget={"epochs": -5}), 422, "invalid_budget", "budget.epochs"),
    ("budget-seconds-negative", dict(budget={"seconds": -1}), 422, "invalid_budget", "budget.seconds"),
    ("budget-string", dict(budget="10 years"), 422, "invalid_budget", "unknown unit 'years'; expected seconds"),
    ("metadata-5MB", dict(metadata={"blob": "x" * 5_000_000}), 413, "payload_too_large",
     "request body is larger than the limit of 1048576 bytes"),
    ("metadata-500kB", dict(metadata={"blob": "x" * 500_000}), 422, "validation_error", "metadata: 500011 bytes of JSON; the limit is 16384"),
    ("metadata-many-keys", dict(metadata={f"k{i}": i for i in range(20_000)}), 422, "validation_error", "metadata"),
    ("metadata-not-object", dict(metadata=[1, 2]), 422, "validation_error", "metadata"),
    ("teacher-id-nul", dict(teacher_id="tch_\x00"), 404, "not_found", "teacher 'tch_\\x00' not found"),
    ("teacher-id-traversal", dict(teacher_id="../../etc/passwd"), 404, "not_found", "'../../etc/passwd' not found"),
    ("teacher-id-huge", dict(teacher_id="t" * 10_000), 422, "validation_error", "teacher_id"),
]


@pytest.mark.parametrize(("change", "status", "code", "text"), [c[1:] for c in BODY_CASES],
                         ids=[c[0] for c in BODY_CASES])
def test_hostile_job_body_is_refused_and_writes_no_row(client, auth, teacher, change, status, code, text):
    before = _job_count()
    body = {**job_body(teacher["id"]), **change}
    err = assert_error(client.post("/v1/jobs", headers=auth, json=body), status, code, text)
    assert "\n" not in err["message"]
    assert _job_count() == before


RAW_CASES = [
    ("truncated", "application/json", b'{"teacher_id": "x", "students": [', 422, "validation_error",
     "request body is not valid JSON"),
    ("trailing-garbage", "application/json", b'{"teacher_id": "x"} trailing', 422, "validation_error",
     "request body is not valid JSON"),
    ("invalid-utf8", "application/json", b'{"teacher_id": "\xff\xfe"}', 400, "bad_request", "not valid UTF-8"),
    ("array-root", "application/json", b"[]", 422, "validation_error", "body"),
    ("null-root", "application/json", b"null", 422, "validation_error", "body"),
    ("empty-json", "application/json", b"", 422, "validation_error", "body"),
    ("nesting-bomb", "application/json", b"[" * 100_000 + b"]" * 100_000, 400, "bad_request", "nested too deeply"),
    ("text-plain", "text/plain", b"hello", 415, "unsupported_media_type", "application/json"),
    ("form-urlencoded", "application/x-www-form-urlencoded", b"teacher_id=x&students=resnet8", 415,
     "unsupported_media_type", "'application/x-www-form-urlencoded'"),
    ("multipart", "multipart/form-data; boundary=b", b"--b--\r\n", 415, "unsupported_media_type", "multipart"),
    ("xml", "application/xml", b"<job/>", 415, "unsupported_media_type", "application/xml"),
    ("no-content-type", None, b"{}", 415, "unsupported_media_type", "no content type"),
]


@pytest.mark.parametrize(("ctype", "raw", "status", "code", "text"), [c[1:] for c in RAW_CASES],
                         ids=[c[0] for c in RAW_CASES])
def test_malformed_body_or_wrong_content_type_is_4xx(client, auth, ctype, raw, status, code, text):
    before = _job_count()
    headers = {**auth, **({"Content-Type": ctype} if ctype else {})}
    assert_error(client.post("/v1/jobs", headers=headers, content=raw), status, code, text)
    assert _job_count() == before


def test_a_cuda_job_is_refused_when_the_workers_have_no_gpu(client, auth, teacher):
    before = _job_count()
    with settings_override(WORKER_GPUS="0"):
        for device in ("cuda", "cuda:0"):
            body = job_body(teacher["id"], hyperparameters={"device": device})
            assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_config", "the workers have no GPU")
        r = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"], hyperparameters={"device": "auto"}))
        assert r.status_code == 202, r.text
    assert _job_count() == before + 1


def test_an_oversized_chunked_job_body_is_413_before_it_is_read_whole(client, auth, teacher):
    """No Content-Length: the body limit counts as the chunks arrive and stops at the cap."""
    sent: list[int] = []

    def chunks():
        head = json.dumps(job_body(teacher["id"]))[:-1].encode() + b', "metadata": {"blob": "'
        yield head
        for _ in range(64):  # 64 x 64 KiB = 4 MiB of metadata, 4x the 1 MiB cap
            sent.append(1)
            yield b"x" * 65536
        yield b'"}}'

    before = _job_count()
    r = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=chunks())
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert_error(r, 413, "payload_too_large", "1048576 bytes")
    assert _job_count() == before


def test_a_valid_job_sent_as_json_with_a_charset_is_accepted(client, auth, teacher):
    """The content-type check must not refuse legitimate variants (charset, +json)."""
    body = json.dumps(job_body(teacher["id"])).encode()
    for ctype in ("application/json; charset=utf-8", "application/vnd.dfmscd+json"):
        r = client.post("/v1/jobs", headers={**auth, "Content-Type": ctype}, content=body)
        assert r.status_code == 202, (ctype, r.text)


@pytest.mark.parametrize("value", ["k" * 256, "caf\u00e9", "a b", ""])
def test_hostile_idempotency_key_is_422(client, auth, teacher, value):
    before = _job_count()
    r = client.post("/v1/jobs", headers={**auth, "Idempotency-Key": value.encode("utf-8")},
                    json=job_body(teacher["id"]))
    assert_error(r, 422, "validation_error", "Idempotency-Key")
    assert _job_count() == before


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/jobs/{bad}"),
    ("POST", "/v1/jobs/{bad}/cancel"),
    ("GET", "/v1/jobs/{bad}/events"),
    ("GET", "/v1/jobs/{bad}/students/resnet8"),
    ("GET", "/v1/teachers/{bad}"),
    ("DELETE", "/v1/teachers/{bad}"),
])
@pytest.mark.parametrize("bad", ["job_%00", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "tch_" + "0" * 28 + "%00", "x" * 2000])
def test_hostile_ids_in_paths_are_404(client, auth, method, path, bad):
    r = client.request(method, path.format(bad=bad), headers=auth)
    assert_error(r, 404, "not_found")
