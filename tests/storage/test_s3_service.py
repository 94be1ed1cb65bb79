"""The API with DFMSCD_STORAGE_URL=s3://...: uploads stream into the bucket (multipart above
one part), refused uploads leave nothing there, downloads stream ranges from it or redirect to
a presigned URL, exports read from it, and an unreachable bucket answers 503."""

from __future__ import annotations

import hashlib
import json
import secrets
import urllib.request

import pytest
from s3_kit import object_names, open_uploads
from service_kit import CARD, assert_error, job_body, make_key, store_results_like_the_worker, upload_teacher

from dfmscd_service.core.settings import get_settings

MiB = 1024 * 1024
WRN_CARD = {"architecture": "wrn_40_2", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}


@pytest.fixture(scope="module")
def s3_api(service, client, moto_s3, s3_bucket):
    """The in-process API (and this process's storage) on the bucket, for this module only."""
    prefix = f"api-{secrets.token_hex(3)}"
    env = {**moto_s3.env(s3_bucket, prefix), "DFMSCD_S3_PART_BYTES": str(5 * MiB),
           "DFMSCD_MAX_UPLOAD_BYTES": str(12 * MiB),
           "DFMSCD_QUEUE_NAME": f"s3-service-{secrets.token_hex(3)}"}  # no worker: jobs stay queued
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    get_settings.cache_clear()
    try:
        yield {"s3": moto_s3.client(), "bucket": s3_bucket, "prefix": prefix}
    finally:
        mp.undo()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def s3_auth(s3_api):
    return {"Authorization": f"Bearer {make_key('s3-owner')}"}


def _local_files() -> list[str]:
    """Files on this host's data dir that an upload could have left (locks are not files of data)."""
    s = get_settings()
    found = [p for root in (s.tmp_dir, s.storage_dir) if root.exists() for p in root.rglob("*") if p.is_file()]
    return sorted(str(p) for p in found if "locks" not in p.parts)


def _teachers_in_bucket(s3_api) -> list[str]:
    return object_names(s3_api["s3"], s3_api["bucket"], f"{s3_api['prefix']}/teachers/")


@pytest.fixture(scope="module")
def wrn_teacher(tmp_path_factory):
    """A valid teacher of ~8.6 MiB: two 5 MiB parts."""
    import torch
    from safetensors.torch import save_file

    from dfmscd.models import create_model

    torch.manual_seed(0)
    model = create_model("wrn_40_2", num_classes=10, in_channels=1, image_size=8).train()
    with torch.no_grad():
        model(torch.randn(8, 1, 8, 8))
    path = tmp_path_factory.mktemp("wrn") / "wrn.safetensors"
    save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(path))
    assert 5 * MiB < path.stat().st_size < 12 * MiB
    return path


def test_upload_streams_into_a_multipart_object_and_delete_removes_it(client, s3_api, s3_auth, wrn_teacher):
    before = _local_files()
    r = upload_teacher(client, s3_auth, wrn_teacher, WRN_CARD)
    assert r.status_code == 201, r.text
    body = r.json()
    data = wrn_teacher.read_bytes()
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size_bytes"] == len(data)
    name = f"{s3_api['prefix']}/teachers/{body['id']}/weights.safetensors"
    assert _teachers_in_bucket(s3_api) == [name]
    head = s3_api["s3"].head_object(Bucket=s3_api["bucket"], Key=name)
    assert head["ETag"].strip('"').endswith("-2")  # a two-part multipart upload, not one PUT
    stored = s3_api["s3"].get_object(Bucket=s3_api["bucket"], Key=name)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == body["sha256"]
    assert open_uploads(s3_api["s3"], s3_api["bucket"], s3_api["prefix"]) == []
    assert _local_files() == before  # no temp file, no validation copy, nothing under storage/

    assert client.delete(f"/v1/teachers/{body['id']}", headers=s3_auth).status_code == 204
    assert _teachers_in_bucket(s3_api) == []


def _multipart(file_bytes: bytes, card: dict, filename: str = "w.safetensors") -> tuple[bytes, str]:
    boundary = "s3test" + secrets.token_hex(8)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="card"\r\n\r\n{json.dumps(card)}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + file_bytes + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_refused_uploads_leave_nothing_in_the_bucket(client, s3_api, s3_auth, teacher_file, monkeypatch):
    before = _local_files()

    def post(body: bytes, ctype: str, headers=None):
        def gen():  # streamed, no Content-Length: the cap is enforced on the bytes received
            for i in range(0, len(body), 256 * 1024):
                yield body[i:i + 256 * 1024]
        return client.post("/v1/teachers", headers={**s3_auth, **(headers or {}), "Content-Type": ctype}, content=gen())

    # over the 12 MiB cap, after two parts were already sent
    assert_error(post(*_multipart(secrets.token_bytes(13 * MiB), CARD)), 413, "payload_too_large")
    # an invalid checkpoint bigger than one part: validated from the bucket, then removed
    assert_error(post(*_multipart(secrets.token_bytes(6 * MiB), CARD, "w.pt")), 422, "invalid_checkpoint")
    # a truncated body (the file part never ends)
    body, ctype = _multipart(secrets.token_bytes(6 * MiB), CARD)
    assert_error(post(body[:-40], ctype), 400, "bad_request")
    # over the storage quota (checked once the size is known)
    monkeypatch.setenv("DFMSCD_MAX_STORAGE_BYTES_PER_KEY", "1000")
    get_settings.cache_clear()
    try:
        assert_error(upload_teacher(client, s3_auth, teacher_file), 413, "storage_quota_exceeded")
    finally:
        monkeypatch.delenv("DFMSCD_MAX_STORAGE_BYTES_PER_KEY")
        get_settings.cache_clear()
    assert _teachers_in_bucket(s3_api) == []
    assert open_uploads(s3_api["s3"], s3_api["bucket"], s3_api["prefix"]) == []
    assert _local_files() == before


@pytest.fixture(scope="module")
def s3_finished_job(client, s3_api, s3_auth, teacher_file):
    teacher = upload_teacher(client, s3_auth, teacher_file).json()
    jid = client.post("/v1/jobs", headers=s3_auth, json=job_body(teacher["id"])).json()["id"]
    stored, _module = store_results_like_the_worker(jid, teacher["card"], b"\x89PNG\r\n\x1a\nfake")
    assert object_names(s3_api["s3"], s3_api["bucket"], f"{s3_api['prefix']}/jobs/{jid}/") == sorted(
        f"{s3_api['prefix']}/{k}" for k in (stored.key, f"jobs/{jid}/samples.t0.png"))
    return {"id": jid, "sha256": stored.sha256, "size": stored.size_bytes}


def test_downloads_stream_from_the_bucket_with_etag_and_ranges(client, s3_auth, s3_finished_job, tmp_path):
    url = f"/v1/jobs/{s3_finished_job['id']}/students/resnet8/weights"
    full = client.get(url, headers=s3_auth)
    assert full.status_code == 200 and full.headers["etag"] == f'"{s3_finished_job["sha256"]}"'
    assert hashlib.sha256(full.content).hexdigest() == s3_finished_job["sha256"]
    part = client.get(url, headers={**s3_auth, "Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == full.content[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{s3_finished_job['size']}"
    tail = client.get(url, headers={**s3_auth, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == full.content[-10:]
    assert client.get(url, headers={**s3_auth, "If-None-Match": full.headers["etag"]}).status_code == 304
    assert_error(client.get(url, headers={**s3_auth, "Range": f"bytes={s3_finished_job['size']}-"}), 416)
    png = client.get(f"/v1/jobs/{s3_finished_job['id']}/samples.png", headers=s3_auth)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_onnx_export_reads_the_student_from_the_bucket(client, s3_api, s3_auth, s3_finished_job):
    jid = s3_finished_job["id"]
    r = client.get(f"/v1/jobs/{jid}/students/resnet8/weights?format=onnx", headers=s3_auth)
    assert r.status_code == 200, r.text
    assert hashlib.sha256(r.content).hexdigest() == r.headers["etag"].strip('"')
    exports = object_names(s3_api["s3"], s3_api["bucket"], f"{s3_api['prefix']}/jobs/{jid}/exports/")
    assert len(exports) == 1 and exports[0].endswith(".onnx")  # cached in the bucket
    again = client.get(f"/v1/jobs/{jid}/students/resnet8/weights?format=onnx", headers=s3_auth)
    assert again.headers["etag"] == r.headers["etag"] and again.content == r.content


def test_presign_redirects_to_a_short_lived_url(client, s3_auth, s3_finished_job, monkeypatch):
    monkeypatch.setenv("DFMSCD_S3_PRESIGN", "true")
    monkeypatch.setenv("DFMSCD_S3_PRESIGN_SECONDS", "60")
    get_settings.cache_clear()
    try:
        r = client.get(f"/v1/jobs/{s3_finished_job['id']}/students/resnet8/weights", headers=s3_auth,
                       follow_redirects=False)
    finally:
        monkeypatch.delenv("DFMSCD_S3_PRESIGN")
        monkeypatch.delenv("DFMSCD_S3_PRESIGN_SECONDS")
        get_settings.cache_clear()
    assert r.status_code == 307 and r.headers["etag"] == f'"{s3_finished_job["sha256"]}"'
    location = r.headers["location"]
    assert "X-Amz-Expires=60" in location and "Authorization" not in location
    with urllib.request.urlopen(location, timeout=10) as resp:  # no API key: the URL alone grants it
        assert hashlib.sha256(resp.read()).hexdigest() == s3_finished_job["sha256"]
    # a tenant without the job gets no URL at all
    other = {"Authorization": f"Bearer {make_key('s3-stranger')}"}
    assert_error(client.get(f"/v1/jobs/{s3_finished_job['id']}/students/resnet8/weights", headers=other,
                            follow_redirects=False), 404)


def test_an_unreachable_bucket_is_503_and_nothing_is_kept(client, s3_api, s3_auth, s3_finished_job, teacher_file,
                                                          monkeypatch):
    from s3_kit import free_port

    before = _local_files()
    monkeypatch.setenv("DFMSCD_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("DFMSCD_S3_MAX_ATTEMPTS", "1")
    get_settings.cache_clear()
    try:
        down = client.get(f"/v1/jobs/{s3_finished_job['id']}/students/resnet8/weights", headers=s3_auth)
        up = upload_teacher(client, s3_auth, teacher_file)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    err = assert_error(down, 503, "storage_unavailable")
    assert "127.0.0.1" not in err["message"]  # the endpoint stays in the server log
    assert_error(up, 503, "storage_unavailable")
    assert _local_files() == before
