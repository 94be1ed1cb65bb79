"""Student metadata and downloads: ETag = sha256, If-None-Match, Range, exports, samples."""

from __future__ import annotations

import hashlib

import pytest
import torch
from service_kit import assert_error, job_body, store_results_like_the_worker
from sqlalchemy import update

from dfmscd_service.core.db import session_scope
from dfmscd_service.core.models import JobStudent
from dfmscd.io import load_model


@pytest.fixture(scope="module")
def finished_job(client, auth, teacher) -> dict:
    """A job whose results were stored exactly as the worker stores them."""
    r = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"]))
    jid = r.json()["id"]
    stored, module = store_results_like_the_worker(jid, teacher["card"], b"\x89PNG\r\n\x1a\nfake")
    return {"id": jid, "sha256": stored.sha256, "size": stored.size_bytes, "module": module}


def test_student_metadata(client, auth, finished_job):
    r = client.get(f"/v1/jobs/{finished_job['id']}/students/resnet8", headers=auth)
    assert r.status_code == 200
    body = r.json()
    assert body["sha256"] == finished_job["sha256"] and body["size_bytes"] == finished_job["size"]
    assert body["card"]["architecture"] == "resnet8" and "onnx" in body["formats"]
    job = client.get(f"/v1/jobs/{finished_job['id']}", headers=auth).json()
    assert job["students"][0]["weights_url"].endswith("/students/resnet8/weights")
    assert job["samples_url"].endswith("/samples.png")
    assert_error(client.get(f"/v1/jobs/{finished_job['id']}/students/nope", headers=auth), 404, "not_found")


def test_weights_download_etag_and_conditional_get(client, auth, finished_job, tmp_path):
    url = f"/v1/jobs/{finished_job['id']}/students/resnet8/weights"
    r = client.get(url, headers=auth)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == finished_job["sha256"]
    assert r.headers["etag"] == f'"{finished_job["sha256"]}"' and r.headers["accept-ranges"] == "bytes"
    path = tmp_path / "s.safetensors"
    path.write_bytes(r.content)
    module, card = load_model(path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(module(x), finished_job["module"](x))
    assert client.get(url, headers={**auth, "If-None-Match": r.headers["etag"]}).status_code == 304
    assert client.get(url, headers={**auth, "If-None-Match": '"other"'}).status_code == 200


def test_range_requests(client, auth, finished_job):
    url = f"/v1/jobs/{finished_job['id']}/students/resnet8/weights"
    full = client.get(url, headers=auth).content
    r = client.get(url, headers={**auth, "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == full[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(full)}"
    assert client.get(url, headers={**auth, "Range": "bytes=-5"}).content == full[-5:]
    assert client.get(url, headers={**auth, "Range": f"bytes={len(full) - 3}-"}).content == full[-3:]
    err = client.get(url, headers={**auth, "Range": f"bytes={len(full)}-"})
    assert_error(err, 416, "range_not_satisfiable")
    assert err.headers["content-range"] == f"bytes */{len(full)}"
    stale = client.get(url, headers={**auth, "Range": "bytes=0-3", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == full


@pytest.mark.parametrize(("fmt", "check"), [("onnx", b"onnx"), ("torchscript", b"PK")])
def test_exports_are_made_once_and_cached(client, auth, finished_job, fmt, check):
    url = f"/v1/jobs/{finished_job['id']}/students/resnet8/weights?format={fmt}"
    first = client.get(url, headers=auth)
    assert first.status_code == 200, first.text
    assert check in first.content[:200] or first.content.startswith(check)
    assert first.headers["etag"] == f'"{hashlib.sha256(first.content).hexdigest()}"'
    second = client.get(url, headers=auth)
    assert second.content == first.content
    assert client.get(url, headers={**auth, "If-None-Match": first.headers["etag"]}).status_code == 304
    with session_scope() as s:
        exports = s.query(JobStudent.exports).filter(JobStudent.job_id == finished_job["id"]).scalar()
    assert exports[fmt]["sha256"] == hashlib.sha256(first.content).hexdigest()


def test_bad_format_and_not_ready(client, auth, finished_job, teacher):
    assert_error(client.get(f"/v1/jobs/{finished_job['id']}/students/resnet8/weights?format=pickle", headers=auth), 422)
    jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
    assert_error(client.get(f"/v1/jobs/{jid}/students/resnet8/weights", headers=auth), 404, "not_ready")
    assert_error(client.get(f"/v1/jobs/{jid}/samples.png", headers=auth), 404, "not_ready")


def test_samples_png(client, auth, finished_job):
    r = client.get(f"/v1/jobs/{finished_job['id']}/samples.png", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG")


def test_a_file_missing_from_storage_is_404_not_500(client, auth, teacher):
    r = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"]))
    jid = r.json()["id"]
    with session_scope() as s:
        s.execute(update(JobStudent).where(JobStudent.job_id == jid).values(
            status="succeeded", storage_key=f"jobs/{jid}/students/gone.safetensors", sha256="0" * 64, size_bytes=1))
    assert_error(client.get(f"/v1/jobs/{jid}/students/resnet8/weights", headers=auth), 404, "not_found", "missing")


@pytest.fixture(scope="module")
def exported_job(client, auth, teacher, tmp_path_factory) -> dict:
    """A job whose student has the worker's files: ONNX verified, TorchScript refused, INT8 flagged
    (real files from dfmscd.deploy; the statuses written as the worker writes them)."""
    from dfmscd.deploy import export_verified
    from dfmscd.io import ModelCard
    from dfmscd_service.core.models import StudentFile
    from dfmscd_service.core.storage import get_storage

    jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
    stored, module = store_results_like_the_worker(jid, teacher["card"], b"\x89PNG\r\n\x1a\nfake", seed=1)
    card = ModelCard.model_validate(teacher["card"])
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    folder = tmp_path_factory.mktemp("exports")
    rows = []
    for fmt, status in (("onnx", "verified"), ("onnx-int8", "flagged")):
        f = export_verified(fmt, module, card, folder / f"resnet8.{fmt}", calibration=images, holdout=images)
        kept = get_storage().put_file(f"jobs/{jid}/students/resnet8.t0.{fmt}", f.path)
        rows.append(dict(format=fmt, status=status, storage_key=kept.key, sha256=kept.sha256, size_bytes=kept.size_bytes,
                         verification={**f.verification.to_dict(), "status": status}))
    rows.append(dict(format="torchscript", status="refused", error="torchscript export of 'resnet8': top-1 agreement "
                     "0.5 is below 0.999"))
    with session_scope() as s:
        student = s.query(JobStudent).filter(JobStudent.job_id == jid).one()
        s.add_all([StudentFile(student_id=student.id, **row) for row in rows])
    return {"id": jid, "rows": {r["format"]: r for r in rows}}


def test_the_workers_files_are_served_a_refused_one_never(client, auth, exported_job):
    jid, rows = exported_job["id"], exported_job["rows"]
    url = f"/v1/jobs/{jid}/students/resnet8/weights"
    for fmt in ("onnx", "onnx-int8"):
        r = client.get(url, params={"format": fmt}, headers=auth)
        assert r.status_code == 200 and r.headers["dfmscd-verification"] == rows[fmt]["status"]
        assert hashlib.sha256(r.content).hexdigest() == rows[fmt]["sha256"] == r.headers["etag"].strip('"')
        part = client.get(url, params={"format": fmt}, headers={**auth, "Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == r.content[:10]
        assert client.get(url, params={"format": fmt}, headers={**auth, "If-None-Match": r.headers["etag"]}).status_code == 304
    err = assert_error(client.get(url, params={"format": "torchscript"}, headers=auth), 422, "export_refused")
    assert "failed verification" in err["message"] and "below 0.999" in err["message"]
    detail = client.get(f"/v1/jobs/{jid}/students/resnet8", headers=auth).json()
    assert detail["formats"] == ["safetensors", "onnx", "onnx-int8"]  # torchscript never
    files = {f["format"]: f for f in detail["files"]}
    assert files["torchscript"]["download_url"] is None and files["torchscript"]["status"] == "refused"
    assert files["onnx-int8"]["status"] == "flagged" and files["onnx-int8"]["download_url"].endswith("format=onnx-int8")
    with session_scope() as s:  # nothing was exported on download for it
        assert s.query(JobStudent.exports).filter(JobStudent.job_id == jid).scalar() == {}
