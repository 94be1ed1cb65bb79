"""``compare.py --merge``: matrices run in parallel (one per seed) combine into the table one run would give."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks.compare import main, merge_matrices


def _part(seed: int, ratio: float) -> dict:
    run = {"arm": "dfmscd", "seed": seed, "student": "resnet8", "test_accuracy": ratio * 0.99, "val_accuracy": 0.9,
           "ratio_to_teacher": ratio, "pool_balance": 0.5 + seed / 10, "label_balance": 1.0, "wall_s": 300.0,
           "cpu_s": 299.0, "teacher_confidence": 0.97, "diversity_ratio_to_real": 1.1, "epochs": 40, "kd_steps": 800}
    return {"dataset": "digits", "budget_s": 300.0, "budget_clock": "cpu", "preset": "balanced", "set": [],
            "students": ["resnet8"], "split": {"seed": 0, "train": 1077, "val": 360, "test": 360},
            "real_within_class_distance": 3.7, "teacher": {"weights": "t.safetensors", "architecture": "resnet20",
                                                           "test_accuracy": 0.99, "val_accuracy": 0.98},
            "machine": {"device": "cpu", "torch_threads": 1}, "arms": ["dfmscd"], "seeds": [seed],
            "created": f"2026-12-03T0{seed}:00:00+00:00", "runs": [run], "complete": True}


def test_parts_merge_into_one_summary_over_their_seeds(tmp_path: Path) -> None:
    merged = merge_matrices([_part(0, 0.96), _part(1, 0.98)])
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 2
    row = merged["summary"]["rows"]["dfmscd/resnet8"]
    mean, std = row["ratio_to_teacher"]
    assert mean == pytest.approx(0.97) and std == pytest.approx(0.01414, abs=1e-4)  # sample std of 0.96, 0.98
    assert row["pool_balance"][0] == pytest.approx(0.55)
    assert merged["summary"]["checks"]["every_student_ratio_ge_0.97"] is True

    paths = []
    for i, part in enumerate((_part(0, 0.96), _part(1, 0.98))):
        part["machine"]["cpu"] = "AMD EPYC 9B14"
        paths.append(tmp_path / f"p{i}.json")
        paths[-1].write_text(json.dumps(part))
    assert main(["--merge", *map(str, paths), "--tag", "_t", "--out-dir", str(tmp_path)]) == 0
    table = (tmp_path / "digits_matrix_300s_t.md").read_text()
    assert "seeds [0, 1]" in table and "0.970 ± 0.014" in table and "cpu (AMD EPYC 9B14)" in table


def test_parts_of_different_set_ups_or_repeated_runs_are_refused() -> None:
    other = _part(1, 0.98)
    other["budget_s"] = 180.0
    with pytest.raises(ValueError, match="budget_s differs"):
        merge_matrices([_part(0, 0.96), other])
    moved = _part(1, 0.98)
    moved["teacher"] = {**moved["teacher"], "weights": "other.safetensors"}
    with pytest.raises(ValueError, match="teacher differs"):
        merge_matrices([_part(0, 0.96), moved])
    retrained = _part(1, 0.98)  # same cache path, weights trained again on another CPU
    retrained["teacher"] = {**retrained["teacher"], "test_accuracy": 0.9917}
    with pytest.raises(ValueError, match="teacher_test_accuracy differs"):
        merge_matrices([_part(0, 0.96), retrained])
    elsewhere = _part(1, 0.98)
    elsewhere["machine"] = {**elsewhere["machine"], "cpu": "Intel(R) Xeon(R) Processor"}
    with pytest.raises(ValueError, match="cpu differs"):
        merge_matrices([_part(0, 0.96), elsewhere])
    with pytest.raises(ValueError, match="appears twice"):
        merge_matrices([_part(0, 0.96), _part(0, 0.97)])
    stopped = copy.deepcopy(_part(1, 0.98))
    stopped["complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        merge_matrices([_part(0, 0.96), stopped])
