"""Teacher uploads through the real ASGI app and a real PostgreSQL database."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from service_kit import CARD, MAX_UPLOAD_BYTES, assert_error, upload_teacher

from dfmscd_service.core.settings import get_settings


def _tmp_uploads() -> list[Path]:
    return sorted(get_settings().tmp_dir.glob("upload-*"))


def _stored_teacher_files() -> set[Path]:
    return set((get_settings().storage_dir / "teachers").rglob("*"))


def test_upload_returns_the_sha256_and_stores_the_bytes(client, auth, teacher_file):
    r = upload_teacher(client, auth, teacher_file)
    assert r.status_code == 201, r.text
    body = r.json()
    data = teacher_file.read_bytes()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size_bytes"] == len(data)
    assert body["file_format"] == "safetensors"
    assert body["card"]["architecture"] == "resnet8" and body["card"]["input_shape"] == [1, 8, 8]
    stored = list((get_settings().storage_dir / "teachers" / body["id"]).iterdir())
    assert len(stored) == 1 and stored[0].read_bytes() == data
    got = client.get(f"/v1/teachers/{body['id']}", headers=auth)
    assert got.status_code == 200 and got.json() == body
    assert _tmp_uploads() == []


def test_weights_only_pt_is_accepted(client, auth, teacher_file, tmp_path):
    from safetensors.torch import load_file

    pt = tmp_path / "teacher.pt"
    torch.save(load_file(str(teacher_file)), pt)
    r = upload_teacher(client, auth, pt)
    assert r.status_code == 201, r.text
    assert r.json()["file_format"] == "pt"


def test_card_part_may_come_first(client, auth, teacher_file):
    boundary = "xYzBoundary"
    data = teacher_file.read_bytes()
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"card\"\r\n\r\n{json.dumps(CARD)}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"w.safetensors\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    r = client.post("/v1/teachers", headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                    content=body)
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_list_is_paginated_newest_first(client, teacher_file):
    from service_kit import make_key

    headers = {"Authorization": f"Bearer {make_key('lister')}"}
    ids = [upload_teacher(client, headers, teacher_file).json()["id"] for _ in range(3)]
    first = client.get("/v1/teachers?limit=2", headers=headers).json()
    assert [t["id"] for t in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True and first["next"] == ids[1]
    second = client.get(f"/v1/teachers?limit=2&after={first['next']}", headers=headers).json()
    assert [t["id"] for t in second["data"]] == [ids[0]]
    assert second["has_more"] is False and second["next"] is None


def test_delete_removes_row_and_file(client, auth, teacher_file):
    tid = upload_teacher(client, auth, teacher_file).json()["id"]
    folder = get_settings().storage_dir / "teachers" / tid
    assert folder.exists()
    r = client.delete(f"/v1/teachers/{tid}", headers=auth)
    assert r.status_code == 204
    assert not folder.exists()
    assert_error(client.get(f"/v1/teachers/{tid}", headers=auth), 404, "not_found")
    assert_error(client.delete(f"/v1/teachers/{tid}", headers=auth), 404, "not_found")


def test_delete_refused_while_a_job_uses_it(client, auth, teacher_file):
    from service_kit import job_body

    tid = upload_teacher(client, auth, teacher_file).json()["id"]
    job = client.post("/v1/jobs", headers=auth, json=job_body(tid))
    assert job.status_code == 202, job.text
    assert_error(client.delete(f"/v1/teachers/{tid}", headers=auth), 409, "teacher_in_use")
    client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=auth)
    assert client.delete(f"/v1/teachers/{tid}", headers=auth).status_code == 204
    assert client.get(f"/v1/jobs/{job.json()['id']}", headers=auth).json()["teacher_id"] is None


def _post_raw(client, auth, file_bytes: bytes, card: dict | str, filename: str = "w.safetensors"):
    card_text = card if isinstance(card, str) else json.dumps(card)
    return client.post("/v1/teachers", headers=auth,
                       files={"file": (filename, io.BytesIO(file_bytes), "application/octet-stream")},
                       data={"card": card_text})


def test_bad_uploads_are_refused_and_leave_nothing_behind(client, auth, teacher_file):
    good = teacher_file.read_bytes()
    before = _stored_teacher_files()
    cases = [
        (good, {**CARD, "architecture": "no_such_net"}, "invalid_card", "no_such_net"),
        (good, {**CARD, "num_classes": 7}, "invalid_checkpoint", None),
        (good, {**CARD, "std": [0.0]}, "invalid_card", "std"),
        (good, "{not json", "invalid_card", "JSON"),
        (b"", CARD, "invalid_checkpoint", "empty"),
        (good[: len(good) // 2], CARD, "invalid_checkpoint", None),
        (b"garbage" * 100, CARD, "invalid_checkpoint", None),
    ]
    for data, card, code, text in cases:
        r = _post_raw(client, auth, data, card)
        assert_error(r, 422, code, text)
    assert _stored_teacher_files() == before
    assert _tmp_uploads() == []


def test_teacher_without_batchnorm_is_refused(client, auth, tmp_path):
    from safetensors.torch import save_file

    from dfmscd.models import create_model

    m = create_model("resnet8", num_classes=10, in_channels=1, image_size=8)
    sd = {k: v for k, v in m.state_dict().items() if ".bn" not in k and "bn1" not in k}
    path = tmp_path / "nobn.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    r = upload_teacher(client, auth, path)
    assert r.status_code == 422 and r.json()["error"]["code"] in ("invalid_checkpoint", "invalid_teacher"), r.text


def test_pickle_that_would_run_code_is_refused_and_not_run(client, auth, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    assert_error(upload_teacher(client, auth, path), 422, "invalid_checkpoint")
    assert not marker.exists()


def test_missing_fields_and_wrong_content_type(client, auth, teacher_file):
    r = client.post("/v1/teachers", headers=auth, files={"file": ("w", teacher_file.read_bytes())})
    assert_error(r, 422, "validation_error", "card")
    r = client.post("/v1/teachers", headers=auth, data={"card": json.dumps(CARD)}, files={"x": ("x", b"1")})
    assert_error(r, 422, "validation_error", "file")
    assert_error(client.post("/v1/teachers", headers=auth, json=CARD), 415, "unsupported_media_type")
    bad = client.post("/v1/teachers", headers={**auth, "Content-Type": "multipart/form-data; boundary=zz"},
                      content=b"--zz\r\nContent-Disposition: form-data; name=\"card\"\r\n\r\n{}")
    assert_error(bad, 400, "bad_request")
    assert _tmp_uploads() == []


def test_declared_length_over_the_cap_is_413_before_reading(client, auth):
    pulled = 0

    def body():
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"\0" * 65536

    headers = {**auth, "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(10 * MAX_UPLOAD_BYTES)}
    r = client.post("/v1/teachers", headers=headers, content=body())
    assert_error(r, 413, "payload_too_large")
    assert pulled <= 1  # the body was not read


def test_streamed_body_over_the_cap_is_cut_off(client, auth):
    """No Content-Length (chunked): the server stops pulling the body once the cap is passed."""
    import asyncio

    import httpx

    chunk = 256 * 1024
    pulled = 0
    boundary = "capb"

    async def body():
        nonlocal pulled
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.safetensors\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(400):  # 100 MiB offered
            pulled += chunk
            yield b"\x01" * chunk

    async def go():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            return await ac.post("/v1/teachers", content=body(),
                                 headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"})

    r = asyncio.run(go())
    assert_error(r, 413, "payload_too_large", str(MAX_UPLOAD_BYTES))
    assert pulled <= MAX_UPLOAD_BYTES + 4 * chunk  # a few chunks past the cap, not 100 MiB
    assert _tmp_uploads() == []


def test_a_bad_card_sent_first_stops_the_upload_early(client, auth):
    import asyncio

    import httpx

    pulled = 0
    boundary = "early"

    async def body():
        nonlocal pulled
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"card\"\r\n\r\n"
               + json.dumps({**CARD, "architecture": "nope"}) + f"\r\n--{boundary}\r\n"
               "Content-Disposition: form-data; name=\"file\"; filename=\"w.safetensors\"\r\n\r\n").encode()
        for _ in range(64):
            pulled += 1
            yield b"\0" * 16384

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app), base_url="http://t") as ac:
            return await ac.post("/v1/teachers", content=body(),
                                 headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"})

    assert_error(asyncio.run(go()), 422, "invalid_card", "nope")
    assert pulled <= 1
    assert _tmp_uploads() == []


def test_storage_quota_per_key(client, teacher_file, monkeypatch):
    from service_kit import make_key

    headers = {"Authorization": f"Bearer {make_key('quota')}"}
    size = teacher_file.stat().st_size
    monkeypatch.setenv("DFMSCD_MAX_STORAGE_BYTES_PER_KEY", str(int(size * 1.5)))
    get_settings.cache_clear()
    try:
        assert upload_teacher(client, headers, teacher_file).status_code == 201
        assert_error(upload_teacher(client, headers, teacher_file), 413, "storage_quota_exceeded")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert _tmp_uploads() == []
