"""benchmarks/gpu_check.py's CPU rehearsal (--tiny): every step of the GPU check runs and leaves its figures."""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks.data import ARCHIVES, DATA_DIR


def _shared_archive() -> None:
    path = DATA_DIR / ARCHIVES["cifar10"]
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI has ../shared/data")
        pytest.skip(f"{path} is not on this machine")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_tiny_run_writes_every_section_with_numbers(tmp_path):
    _shared_archive()
    from benchmarks.gpu_check import JSON_NAME, MD_NAME, SECTIONS, main

    assert main(["--tiny", "--out-dir", str(tmp_path), "--data-dir", str(DATA_DIR)]) == 0
    r = json.loads((tmp_path / JSON_NAME).read_text())
    assert r["complete"] is True and r["errors"] == {}
    assert all(r.get(section) for section in SECTIONS), [s for s in SECTIONS if not r.get(s)]
    assert r["machine"]["tiny"] is True and r["machine"]["device"] == "cpu"

    peak = r["matmul_peak"]
    assert _number(peak["peak_tflops"]) and peak["peak_tflops"] > 0 and str(peak["peak_size"]) in peak["sizes"]

    assert r["data"]["train"] == 2000 and r["data"]["test"] == 500 and r["data"]["input_shape"] == [3, 32, 32]

    t = r["teacher"]
    for key in ("test_accuracy", "val_accuracy", "wall_s", "steps", "images_per_s", "gflop_per_step", "achieved_tflops"):
        assert _number(t[key]), key
    assert t["steps"] > 0 and 0.0 <= t["test_accuracy"] <= 1.0 and t["wall_s"] < t["budget_s"] + 5

    x = r["dfmscd"]
    for key in ("synthesis_images_per_s", "kd_steps_per_s", "pool_balance", "wall_s", "epochs", "kd_steps"):
        assert _number(x[key]), key
    assert x["kd_steps"] > 0 and x["images_synthesized"] > 0
    assert set(x["timings"]) >= {"total_s", "setup_s", "synthesis_s", "kd_s", "evaluation_s"}
    assert all(_number(v) for v in x["timing_shares"].values())
    assert set(x["students"]) == {"resnet8", "wrn_16_1"}
    for s in x["students"].values():
        assert _number(s["test_accuracy"]) and _number(s["ratio_to_teacher"])

    k = r["kd_flops"]
    assert "FlopCounterMode" in k["method"]
    for key in ("gflop_per_kd_step", "teacher_forward_gflop", "achieved_tflops", "share_of_peak"):
        assert _number(k[key]) and k[key] > 0, key
    assert k["gflop_per_kd_step"] > k["teacher_forward_gflop"]

    pub = r["published"]
    assert pub["test_accuracy"] == 0.9405 and pub["synthesis_gpu_hours"] == 0.28
    assert set(pub["ours_test_accuracy"]) == {"resnet8", "wrn_16_1"} and "JPEG" in pub["caveat"]

    md = (tmp_path / MD_NAME).read_text()
    assert "# GPU check (complete)" in md and "| resnet8 |" in md and "94.05%" in md
