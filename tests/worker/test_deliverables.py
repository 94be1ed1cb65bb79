"""Students ready to deploy, end to end with the real worker (PostgreSQL, Redis, Celery): a job that
names an evaluation set ends with every student stored in every format, each verified, the
student report, the calibration sample counted in the owner's quota and the job-end evaluation;
the INT8 file downloads and runs in ONNX Runtime; an evaluation on request (a class-folder
archive) runs on the worker; a job from before these files keeps the exports made on download
and has no INT8 file; deleting the set and the job gives every byte back.

One job (one student) serves every assertion of the file, so the worker runs it once.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from service_kit import (
    CARD,
    TINY_HYPERPARAMETERS,
    assert_error,
    job_body,
    make_key,
    store_results_like_the_worker,
    upload_evaluation_set,
    upload_teacher,
    wait_for,
    write_evaluation_archive,
    write_evaluation_npz,
)

from dfmscd.formats import MODEL_FORMATS

FORMATS = list(MODEL_FORMATS)  # safetensors, onnx, torchscript, onnx-int8
TERMINAL = ("succeeded", "failed", "cancelled")


def _poll(client, headers, url: str, what: str, timeout: float = 600) -> dict:
    """Until the resource at ``url`` is finished; ``timeout`` only bounds a broken run."""
    def done():
        body = client.get(url, headers=headers).json()
        return body if body["status"] in (*TERMINAL,) else None

    return wait_for(done, timeout, interval=0.25, what=what)


@pytest.fixture(scope="module")
def owner(client, teacher_file) -> dict:
    """A key of its own (its quota is counted in isolation) with a teacher."""
    headers = {"Authorization": f"Bearer {make_key('deliverables')}"}
    teacher = upload_teacher(client, headers, teacher_file)
    assert teacher.status_code == 201, teacher.text
    return {"headers": headers, "teacher": teacher.json()}


@pytest.fixture(scope="module")
def sets(client, owner, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("sets")
    npz = upload_evaluation_set(client, owner["headers"], write_evaluation_npz(folder / "test.npz", n=40, seed=5),
                                teacher_id=owner["teacher"]["id"])
    assert npz.status_code == 201, npz.text
    archive = upload_evaluation_set(client, owner["headers"],
                                    write_evaluation_archive(folder / "test.tar.gz", n=40, seed=5))
    assert archive.status_code == 201, archive.text
    return {"npz": npz.json(), "archive": archive.json(), "x": np.load(folder / "test.npz")["x"],
            "y": np.load(folder / "test.npz")["y"]}


@pytest.fixture(scope="module")
def done(client, owner, sets, celery_worker) -> dict:
    body = job_body(owner["teacher"]["id"], students=[{"architecture": "resnet8", "name": "small"}],
                    hyperparameters=TINY_HYPERPARAMETERS, budget={"epochs": 1}, evaluation_set_id=sets["npz"]["id"])
    created = client.post("/v1/jobs", headers=owner["headers"], json=body)
    assert created.status_code == 202, created.text
    assert created.json()["evaluation_set_id"] == sets["npz"]["id"]
    job = _poll(client, owner["headers"], f"/v1/jobs/{created.json()['id']}", "the job to end")
    assert job["status"] == "succeeded", (job["error"], celery_worker.log())
    return job


def test_every_format_is_stored_verified_and_reported(client, owner, done):
    h, jid = owner["headers"], done["id"]
    assert done["report"]["timings"]["export_s"] > 0
    assert done["report"]["exports"]["formats"] == FORMATS and done["report"]["exports"]["refused"] == {}
    detail = client.get(f"/v1/jobs/{jid}/students/small", headers=h).json()
    assert detail["formats"] == FORMATS
    files = {f["format"]: f for f in detail["files"]}
    assert list(files) == FORMATS
    for fmt, f in files.items():
        assert f["status"] in ("verified", "flagged") and f["error"] is None and f["size_bytes"] > 0
        v = f["verification"]
        assert v["format"] == fmt and v["status"] == f["status"] and v["images"] > 0
        assert v["min_agreement"] == (0.97 if fmt == "onnx-int8" else 0.999)
        if fmt != "onnx-int8":
            assert f["status"] == "verified" and v["top1_agreement"] >= 0.999
        got = client.get(f["download_url"], headers=h)
        assert got.status_code == 200 and got.headers["dfmscd-verification"] == f["status"]
        assert hashlib.sha256(got.content).hexdigest() == f["sha256"] == got.headers["etag"].strip('"')
    assert files["safetensors"]["sha256"] == detail["sha256"]
    flagged = [fmt for fmt, f in files.items() if f["status"] == "flagged"]
    assert all(any(fmt in w and "small" in w for w in done["warnings"]) for fmt in flagged)

    report = client.get(f"/v1/jobs/{jid}/students/small/report", headers=h).json()
    r = report["report"]
    assert r["parameters"] == detail["parameters"] and r["flops"] == 2 * r["macs"] > 0
    assert set(r["formats"]) == set(FORMATS) and r["flagged"] == flagged
    for fmt, entry in r["formats"].items():
        assert entry["sha256"] == files[fmt]["sha256"] and entry["size_bytes"] == files[fmt]["size_bytes"]
        assert set(entry["latency_ms"]) == {"1", "64"} and entry["latency_ms"]["64"]["runs"] == 3
        assert 0 <= entry["teacher_agreement"] <= 1
    assert r["cpu"]["model"] and set(r["cpu"]["isa"]) == {"avx2", "avx512", "vnni", "amx"}
    assert r["thresholds"] == {"float_min_agreement": 0.999, "int8_min_agreement": 0.97}
    assert [f["format"] for f in report["files"]] == FORMATS


def test_the_int8_file_runs_in_onnx_runtime_and_matches_the_job_end_evaluation(client, owner, sets, done):
    import onnxruntime as ort

    h, jid = owner["headers"], done["id"]
    got = client.get(f"/v1/jobs/{jid}/students/small/weights", params={"format": "onnx-int8"}, headers=h)
    assert got.status_code == 200 and got.headers["content-disposition"].endswith('filename="small.int8.onnx"')
    session = ort.InferenceSession(got.content, providers=["CPUExecutionProvider"])
    x = (sets["x"].astype(np.float32) / 255 - CARD["mean"][0]) / CARD["std"][0]
    predicted = session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1)

    [evaluation] = client.get(f"/v1/jobs/{jid}/evaluations", headers=h).json()["data"]
    assert evaluation["source"] == "job_end" and evaluation["status"] == "succeeded", evaluation
    assert evaluation["evaluation_set_id"] == sets["npz"]["id"]
    results = evaluation["results"]
    assert results["data"] == {"file": "test.npz", "n": 40}
    assert results["teacher"]["architecture"] == "resnet8" and 0 <= results["teacher"]["accuracy"] <= 1
    accuracy = results["students"]["small"]["accuracy"]
    assert set(accuracy) == {"pytorch", *FORMATS}
    assert accuracy["onnx-int8"] == pytest.approx(float((predicted == sets["y"]).mean()), abs=1 / 40)
    assert accuracy["pytorch"] == accuracy["safetensors"] == accuracy["onnx"] == accuracy["torchscript"]
    [shown] = client.get(f"/v1/jobs/{jid}/students/small/report", headers=h).json()["evaluations"]
    assert shown["accuracy"] == accuracy and shown["teacher_accuracy"] == results["teacher"]["accuracy"]


def test_an_evaluation_on_request_on_an_archive_runs_on_the_worker(client, owner, sets, done, celery_worker):
    h, jid = owner["headers"], done["id"]
    r = client.post(f"/v1/jobs/{jid}/evaluations", headers=h, json={"evaluation_set_id": sets["archive"]["id"]})
    assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["source"] == "request", r.text
    evaluation = _poll(client, h, f"/v1/jobs/{jid}/evaluations/{r.json()['id']}", "the evaluation")
    assert evaluation["status"] == "succeeded", (evaluation["error"], celery_worker.log())
    # The same images as the .npz, as PNG files in class folders: the same accuracies.
    at_end = client.get(f"/v1/jobs/{jid}/evaluations", headers=h).json()["data"][-1]["results"]
    assert evaluation["results"]["data"] == {"file": "test.tar.gz", "n": 40}
    assert evaluation["results"]["students"] == at_end["students"]
    assert evaluation["results"]["teacher"] == at_end["teacher"]


def test_the_calibration_sample_is_stored_and_counted_in_the_quota(client, owner, sets, done):
    from dfmscd_service.api.services.quota import storage_used
    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.models import Job, StudentFile
    from dfmscd_service.core.storage import get_storage

    with session_scope() as s:
        job = s.get(Job, done["id"])
        key, size, digest, owner_id = job.calibration_key, job.calibration_size_bytes, job.calibration_sha256, job.owner_id
        file_bytes = sum(f.size_bytes for f in s.query(StudentFile).all()
                         if f.student.job_id == done["id"] and f.format != "safetensors")
        used = storage_used(s, owner_id)
    data = get_storage().open(key).read()
    assert len(data) == size and hashlib.sha256(data).hexdigest() == digest
    x = np.load(io.BytesIO(data))["x"]
    assert x.dtype == np.uint8 and x.shape[1:] == (1, 8, 8) and 0 < x.shape[0] <= 1024
    assert done["report"]["exports"]["calibration_images"] == x.shape[0]
    expected = (owner["teacher"]["size_bytes"] + sets["npz"]["size_bytes"] + sets["archive"]["size_bytes"]
                + done["students"][0]["size_bytes"] + file_bytes + size)
    assert used == expected


def test_a_job_from_before_keeps_exports_on_download_and_has_no_int8_file(client, owner, sets, celery_worker):
    h = owner["headers"]
    jid = client.post("/v1/jobs", headers=h, json=job_body(owner["teacher"]["id"])).json()["id"]
    stored, _module = store_results_like_the_worker(jid, CARD, b"\x89PNG\r\n\x1a\nold")
    onnx = client.get(f"/v1/jobs/{jid}/students/resnet8/weights", params={"format": "onnx"}, headers=h)
    assert onnx.status_code == 200 and onnx.content[:200].find(b"onnx") >= 0
    assert "dfmscd-verification" not in onnx.headers
    err = assert_error(client.get(f"/v1/jobs/{jid}/students/resnet8/weights", params={"format": "onnx-int8"},
                                  headers=h), 409, "no_calibration_sample")
    assert "no onnx-int8 file" in err["message"] and "calibration sample" in err["message"]
    detail = client.get(f"/v1/jobs/{jid}/students/resnet8", headers=h).json()
    assert detail["formats"] == ["safetensors", "onnx", "torchscript"] and detail["files"] == []
    report = client.get(f"/v1/jobs/{jid}/students/resnet8/report", headers=h).json()
    assert report["report"] is None and report["files"] == []
    # Its stored weights (and the ONNX file made on download) can still be evaluated.
    r = client.post(f"/v1/jobs/{jid}/evaluations", headers=h, json={"evaluation_set_id": sets["npz"]["id"]})
    assert r.status_code == 202, r.text
    evaluation = _poll(client, h, f"/v1/jobs/{jid}/evaluations/{r.json()['id']}", "the evaluation")
    assert evaluation["status"] == "succeeded", (evaluation["error"], celery_worker.log())
    assert set(evaluation["results"]["students"]["resnet8"]["accuracy"]) == {"pytorch", "safetensors", "onnx"}


def test_another_owner_sees_none_of_it(client, other_auth, owner, sets, done, tmp_path):
    jid, mine = done["id"], owner["headers"]
    [evaluation] = [e for e in client.get(f"/v1/jobs/{jid}/evaluations", headers=mine).json()["data"]
                    if e["source"] == "job_end"]
    for url in (f"/v1/jobs/{jid}/students/small/report", f"/v1/jobs/{jid}/evaluations",
                f"/v1/jobs/{jid}/evaluations/{evaluation['id']}", f"/v1/evaluation-sets/{sets['npz']['id']}",
                f"/v1/jobs/{jid}/students/small/weights?format=onnx-int8"):
        assert_error(client.get(url, headers=other_auth), 404, "not_found")
    assert sets["npz"]["id"] not in json.dumps(client.get("/v1/evaluation-sets", headers=other_auth).json())
    assert_error(client.post(f"/v1/jobs/{jid}/evaluations", headers=other_auth,
                             json={"evaluation_set_id": sets["npz"]["id"]}), 404, "not_found")
    assert_error(client.delete(f"/v1/evaluation-sets/{sets['npz']['id']}", headers=other_auth), 404, "not_found")
    assert_error(client.delete(f"/v1/jobs/{jid}", headers=other_auth), 404, "not_found")
    # Someone else's set on my job: 404 too, naming nothing of theirs.
    theirs = upload_evaluation_set(client, other_auth, write_evaluation_npz(tmp_path / "theirs.npz", n=4))
    assert theirs.status_code == 201, theirs.text
    assert_error(client.post(f"/v1/jobs/{jid}/evaluations", headers=mine,
                             json={"evaluation_set_id": theirs.json()["id"]}), 404, "not_found")
    assert client.delete(f"/v1/evaluation-sets/{theirs.json()['id']}", headers=other_auth).status_code == 204


def test_deleting_the_set_and_the_job_gives_every_byte_back(client, owner, sets, done):
    from dfmscd_service.api.services.quota import storage_used
    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.models import Job
    from dfmscd_service.core.settings import get_settings

    h, jid = owner["headers"], done["id"]
    active = client.post("/v1/jobs", headers=h, json=job_body(owner["teacher"]["id"], budget={"epochs": 50},
                                                              evaluation_set_id=sets["archive"]["id"])).json()["id"]
    assert_error(client.delete(f"/v1/jobs/{active}", headers=h), 409, "job_active")
    assert_error(client.delete(f"/v1/evaluation-sets/{sets['archive']['id']}", headers=h), 409, "evaluation_set_in_use")
    client.post(f"/v1/jobs/{active}/cancel", headers=h)
    wait_for(lambda: client.get(f"/v1/jobs/{active}", headers=h).json()["status"] == "cancelled", 120,
             what="the queued job to be cancelled")

    root = get_settings().storage_dir
    assert client.delete(f"/v1/evaluation-sets/{sets['archive']['id']}", headers=h).status_code == 204
    assert not (root / "evaluation-sets" / sets["archive"]["id"]).exists()
    assert [e["evaluation_set_id"] for e in client.get(f"/v1/jobs/{jid}/evaluations", headers=h).json()["data"]] == [
        sets["npz"]["id"]]  # the archive's evaluation went with it
    assert client.get(f"/v1/jobs/{active}", headers=h).json()["evaluation_set_id"] is None

    assert (root / "jobs" / jid).is_dir()
    assert client.delete(f"/v1/jobs/{jid}", headers=h).status_code == 204
    assert not (root / "jobs" / jid).exists()
    assert_error(client.get(f"/v1/jobs/{jid}", headers=h), 404, "not_found")
    with session_scope() as s:
        owner_id = s.query(Job.owner_id).filter(Job.id == active).scalar()
        assert storage_used(s, owner_id) == owner["teacher"]["size_bytes"] + sets["npz"]["size_bytes"] + sum(
            st["size_bytes"] or 0 for j in client.get("/v1/jobs", headers=h).json()["data"] for st in j["students"])


def test_a_float_file_that_fails_verification_is_refused_and_not_stored(tmp_path):
    """A real refusal, made by the worker's own step: a resnet8 whose traced exports flip its logits
    (a forward hook active only while tracing; the safetensors file rebuilds the plain network)."""
    from types import SimpleNamespace

    import torch

    from dfmscd.io import ModelCard
    from dfmscd.models import create_model
    from dfmscd_service.core.storage_local import LocalStorage
    from dfmscd_service.worker.deliverables import deliver

    card = ModelCard.model_validate(CARD)
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10, in_channels=1, image_size=8).eval()
    student.register_forward_hook(lambda module, inputs, out: -out if torch.jit.is_tracing() else None)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    result = SimpleNamespace(students={"s": student}, cards={"s": card}, calibration=images, holdout=images)
    storage, written = LocalStorage(tmp_path / "storage"), []
    out = deliver(result, card, None, storage, "job_test", "t0", tmp_path / "scratch", 0, written)

    rows = {r["format"]: r for r in out.files["s"]}
    assert rows["safetensors"]["status"] == "verified"
    for fmt in ("onnx", "torchscript"):
        assert rows[fmt]["status"] == "refused" and rows[fmt]["storage_key"] is None, rows[fmt]
        assert "agreement" in rows[fmt]["error"] and "\n" not in rows[fmt]["error"]
        assert any(f"no {fmt} file" in w for w in out.warnings)
    assert rows["onnx-int8"]["status"] == "flagged"  # INT8 is never refused: stored, flagged
    assert out.refused == {"s": {"onnx": rows["onnx"]["error"], "torchscript": rows["torchscript"]["error"]}}
    assert sorted(k.rsplit("/", 1)[-1] for k in written) == ["calibration.t0.npz", "s.t0.int8.onnx", "s.t0.safetensors"]
    assert all(storage.exists(k) for k in written) and not (tmp_path / "scratch" / "deliverables").exists()
    assert set(out.reports["s"]["formats"]) == {"safetensors", "onnx-int8"} and out.reports["s"]["latency"] is None
