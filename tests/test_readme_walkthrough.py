"""The README's curl walk-through, run exactly as written against a live embedded server.

The bash block(s) between ``<!-- walkthrough:begin -->`` and ``<!-- walkthrough:end -->`` in
README.md are run with ``bash`` under ``set -euo pipefail`` (any failing command fails the test),
in a folder holding what the README says the user brings: ``teacher.safetensors`` (a real
resnet20 whose BatchNorm statistics come from the sample images, so its card raises no warning),
``train_sample.npz`` and ``test.npz``. The server is ``dfmscd serve`` on a free port with its
embedded defaults (SQLite and the SQLite broker in a temp folder), the key is the one it prints
on first start. The environment is the README's: ``KEY``, ``API``, and ``PRESET=fast
BUDGET=2e`` (the README's documented quick try). ``uv run X`` runs X in this test's environment
(a two-line ``uv`` on PATH), as ``uv run`` would in a checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BLOCK_RE = re.compile(r"<!-- walkthrough:begin -->(.*?)<!-- walkthrough:end -->", re.S)
BASH_RE = re.compile(r"```bash\n(.*?)```", re.S)


def walkthrough_script() -> str:
    regions = BLOCK_RE.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    blocks = [b for region in regions for b in BASH_RE.findall(region)]
    assert blocks, "README.md has no bash block between the walkthrough markers"
    return "set -euo pipefail\n" + "\n".join(blocks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_files(folder: Path) -> None:
    """What the README's reader brings: a teacher, sample training images, labelled test data."""
    from safetensors.torch import save_file

    from dfmscd.models import create_model
    from dfmscd.normalisation import stats_from_npz

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(256, 8, 8), dtype=np.uint8)
    np.savez(folder / "train_sample.npz", x=x)
    np.savez(folder / "test.npz", x=x[:64], y=rng.integers(0, 10, size=64))
    stats = stats_from_npz(folder / "train_sample.npz")
    torch.manual_seed(0)
    teacher = create_model("resnet20", num_classes=10, in_channels=1, image_size=8)
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the statistics of exactly these images
    inputs = (torch.from_numpy(x).float()[:, None] / 255 - stats.mean[0]) / stats.std[0]
    teacher.train()
    with torch.no_grad():
        for batch in inputs.split(64):
            teacher(batch)
    save_file({k: v.contiguous() for k, v in teacher.eval().state_dict().items()}, str(folder / "teacher.safetensors"))


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("walkthrough-data")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMSCD_")}
    env.update(DFMSCD_DATA_DIR=str(data), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    log = open(data / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dfmscd_service.cli", "serve", "--port", str(port)],
                            cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # readiness is a condition we poll, not a sleep we hope is long enough
            assert proc.poll() is None, (data / "serve.log").read_text()[-4000:]
            try:
                if httpx.get(f"{api}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "dfmscd serve did not answer /healthz in 180 s"
            time.sleep(0.2)
        lines = (data / "serve.log").read_text().splitlines()
        key = next(line.strip() for line in lines if line.strip().startswith("dfk_"))
        yield {"API": api, "KEY": key, "log": str(data / "serve.log")}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def test_readme_walkthrough_runs_as_written(embedded_server, tmp_path):
    if shutil.which("jq") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("jq is not installed (the README's walk-through uses it; scripts/test.sh installs it)")
        pytest.skip("jq is not installed")
    _user_files(tmp_path)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "uv").write_text('#!/bin/sh\n[ "$1" = run ] && shift\nexec "$@"\n')
    (shim / "uv").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMSCD_")}
    env.update(KEY=embedded_server["KEY"], API=embedded_server["API"], PRESET="fast", BUDGET="2e",
               OMP_NUM_THREADS="1", PATH=f"{shim}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    run = subprocess.run(["bash", "-c", walkthrough_script()], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    detail = f"stdout:\n{run.stdout[-6000:]}\nstderr:\n{run.stderr[-6000:]}\nserver:\n{Path(embedded_server['log']).read_text()[-3000:]}"
    assert run.returncode == 0, detail

    teacher = json.loads((tmp_path / "teacher.out.json").read_text())
    assert teacher["warnings"] == [], teacher  # the card computed by `dfmscd card` matches the teacher
    job = json.loads((tmp_path / "job.out.json").read_text())
    assert job["budget"] == {"epochs": 2} and job["warnings"] == [], job
    assert "event: end" in run.stdout and "accuracy" in run.stdout, detail

    from dfmscd.io import load_model, read_card

    _module, card = load_model(tmp_path / "resnet8.safetensors")
    assert card.mean == read_card(tmp_path / "teacher.json").mean
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "vgg.onnx")).metadata_props}
    assert json.loads(props["mean"]) == list(card.mean) and json.loads(props["std"]) == list(card.std)
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    headers = {"Authorization": f"Bearer {embedded_server['KEY']}"}
    jobs = httpx.get(f"{embedded_server['API']}/v1/jobs", headers=headers, timeout=30).json()["data"]
    done = {j["id"]: j for j in jobs}[job["id"]]
    assert all(isinstance(s["metrics"].get("kd_ms_per_step"), float) for s in done["students"]), done["students"]
    assert sorted(j["status"] for j in jobs) == ["cancelled", "succeeded"]
