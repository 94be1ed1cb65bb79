"""The web process never imports torch: the zoo, teacher checks and job plans run in the torch pool.

A fresh interpreter (nothing imported before) builds the app, runs its lifespan and serves the
requests that used to load torch in-process (a teacher upload, a bad one, an evaluation set checked
against the teacher's card, a job with a seconds budget, its advice and that set, a student report,
the zoo), over an in-process ASGI client; then ``sys.modules`` must hold no ``torch``, ``onnx`` or
``onnxruntime``. The answers are checked
too, so a pool that silently did nothing would fail. The lifespan also freezes the start-up heap
(``gc.freeze``), so full collections under load skip the framework's objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service_kit import CARD, write_evaluation_npz

SCRIPT = r"""
import asyncio, gc, json, sys
import httpx
from dfmscd_service.api.auth import create_api_key
from dfmscd_service.api.main import create_app
from dfmscd_service.core.db import session_scope

card, weights, evaluation_set = json.loads(sys.argv[1]), open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()


async def main():
    app = create_app()
    frozen_before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        frozen = [frozen_before, gc.get_freeze_count()]
        with session_scope() as s:
            _, secret = create_api_key(s, "lean-api")
        out = {"frozen": frozen}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                     headers={"Authorization": f"Bearer {secret}"}, timeout=120) as c:
            out["healthz"] = (await c.get("/healthz")).status_code
            up = await c.post("/v1/teachers", files={"file": ("t.safetensors", weights)}, data={"card": json.dumps(card)})
            out["upload"] = [up.status_code, up.json()]
            bad = await c.post("/v1/teachers", files={"file": ("t.safetensors", weights)},
                               data={"card": json.dumps({**card, "architecture": "no_such_net"})})
            out["bad_card"] = [bad.status_code, bad.json()]
            evs = await c.post("/v1/evaluation-sets", files={"file": ("test.npz", evaluation_set)},
                               data={"teacher_id": up.json()["id"]})
            out["evaluation_set"] = [evs.status_code, evs.json()]
            job = await c.post("/v1/jobs", json={"teacher_id": up.json()["id"], "students": [{"architecture": "resnet8"}],
                                                 "preset": "fast", "budget": "30s", "evaluation_set_id": evs.json()["id"]})
            out["job"] = [job.status_code, job.json()]
            out["poll"] = (await c.get(f"/v1/jobs/{job.json()['id']}")).status_code
            out["report"] = (await c.get(f"/v1/jobs/{job.json()['id']}/students/resnet8/report")).status_code
            out["lists"] = [(await c.get(p)).status_code for p in ("/v1/jobs?limit=5", "/v1/teachers?limit=5")]
            zoo = await c.get("/v1/architectures", params={"family": "dfmscd"})
            out["zoo"] = [zoo.status_code, [a["name"] for a in zoo.json()["data"]]]
            await c.post(f"/v1/jobs/{job.json()['id']}/cancel")
    out["torch_modules"] = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
    out["onnx_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime"))
    print(json.dumps(out))


asyncio.run(main())
"""


def test_the_api_process_never_imports_torch(service, teacher_file: Path, tmp_path: Path) -> None:
    evaluation_set = write_evaluation_npz(tmp_path / "test.npz", n=8)
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CARD), str(teacher_file), str(evaluation_set)],
                          capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["healthz"] == 200
    status, teacher = out["upload"]
    assert status == 201, teacher
    assert teacher["card"]["architecture"] == "resnet8"
    status, err = out["bad_card"]
    assert status == 422 and err["error"]["code"] == "invalid_card" and "no_such_net" in err["error"]["message"]
    status, job = out["job"]
    assert status == 202, job
    assert job["students"][0]["parameters"] > 0  # counted by building the student, in the pool
    assert job["advice"]["message"]  # a seconds budget's advice is planned in this process (dfmscd.sizing)
    assert out["poll"] == 200 and out["lists"] == [200, 200] and out["report"] == 200
    status, evaluation_set = out["evaluation_set"]  # read whole and checked against the card in the pool
    assert status == 201 and evaluation_set["summary"]["images"] == 8, evaluation_set
    status, names = out["zoo"]
    assert status == 200 and "resnet8" in names
    assert out["torch_modules"] == [] and out["onnx_modules"] == []
    # the start-up heap is frozen out of the collector's full passes (docs/reliability.md, "A lean API", gc.freeze)
    before, after = out["frozen"]
    assert before == 0 and after > 10_000, out["frozen"]
