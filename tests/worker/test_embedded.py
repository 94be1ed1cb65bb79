"""`dfmscd serve` end to end in a subprocess: embedded SQLite + SQLite broker, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from service_kit import CARD, ROOT, TINY_HYPERPARAMETERS, make_teacher, wait_for

from dfmscd.io import load_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                out.append(int(entry.name))
    return out


@pytest.fixture
def embedded(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMSCD_")}
    env.update({
        "DFMSCD_DATA_DIR": str(tmp_path / "data"),
        "DFMSCD_TORCH_THREADS": "1",
        "DFMSCD_SSE_POLL_SECONDS": "0.1",
        "DFMSCD_CANCEL_POLL_SECONDS": "0.2",
        "PYTHONPATH": str(ROOT),
    })
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "dfmscd", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            # generous per-request bound: on a loaded machine /readyz can take seconds (with 2 s
            # and 180 s the fixture once gave up while the server was up and answering slowly)
            return httpx.get(f"{base}/readyz", timeout=30).status_code == 200
        except httpx.HTTPError:
            assert proc.poll() is None, log.read_text()
            return False

    try:
        # bounds for a broken start only (both return as soon as the condition holds)
        wait_for(up, 600, 0.25, what="dfmscd serve to be ready")
        wait_for(lambda: b" ready." in log.read_bytes(), 600, 0.25, what="the embedded worker")
        keys = [ln for ln in log.read_text().splitlines() if ln.startswith("dfk_")]
        assert len(keys) == 1, log.read_text()
        yield {"base": base, "key": keys[0], "proc": proc, "env": env, "log": log, "tmp": tmp_path}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_serve_runs_api_and_worker_together(embedded):
    base, tmp = embedded["base"], embedded["tmp"]
    h = {"Authorization": f"Bearer {embedded['key']}"}
    weights = make_teacher(tmp / "teacher.safetensors")
    with httpx.Client(base_url=base, headers=h, timeout=300) as c:
        with open(weights, "rb") as fh:
            t = c.post("/v1/teachers", files={"file": ("teacher.safetensors", fh)}, data={"card": json.dumps(CARD)})
        assert t.status_code == 201, t.text
        job = c.post("/v1/jobs", json={"teacher_id": t.json()["id"], "students": [{"architecture": "resnet8"}],
                                       "preset": "fast", "hyperparameters": TINY_HYPERPARAMETERS,
                                       "budget": {"epochs": 3}})
        assert job.status_code == 202, job.text
        jid = job.json()["id"]

        # Live SSE over a real socket: events arrive while the job runs; the stream ends with it.
        ids, kinds, end = [], [], None
        with c.stream("GET", f"/v1/jobs/{jid}/events", headers={"Accept": "text/event-stream"}, timeout=600) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in s.iter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "end":
                    end = json.loads(line[6:])
                    break
                elif line.startswith("data: "):
                    kinds.append(json.loads(line[6:])["kind"])
        assert end == {"status": "succeeded"}, embedded["log"].read_text()[-3000:]
        assert ids == list(range(1, len(ids) + 1)) and {"progress", "metrics", "log"} <= set(kinds)

        final = c.get(f"/v1/jobs/{jid}").json()
        assert final["status"] == "succeeded" and final["progress"] == 1.0
        data = c.get(f"/v1/jobs/{jid}/students/resnet8/weights").content
        (tmp / "student.safetensors").write_bytes(data)
        module, card = load_model(tmp / "student.safetensors")
        assert module(torch.zeros(4, *card.input_shape)).shape == (4, 10)

        # `dfmscd keys create` against the same data dir: a second tenant, key alone on the last line
        made = subprocess.run([sys.executable, "-m", "dfmscd", "keys", "create", "--name", "second"],
                              env=embedded["env"], cwd=tmp, capture_output=True, text=True, timeout=600)
        assert made.returncode == 0, made.stderr
        second = made.stdout.strip().splitlines()[-1]
        assert second.startswith("dfk_") and second != embedded["key"]
        h2 = {"Authorization": f"Bearer {second}"}
        assert c.get("/v1/jobs", headers=h2).json()["data"] == []
        assert c.get(f"/v1/jobs/{jid}", headers=h2).status_code == 404

    proc = embedded["proc"]
    children = _children(proc.pid)
    assert children, "serve should have a worker child process"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(300) == 0
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in children), 300, 0.2,
             what="the worker to stop with the server")
    assert (tmp / "data" / "dfmscd.sqlite").exists() and (tmp / "data" / "broker.sqlite").exists()
