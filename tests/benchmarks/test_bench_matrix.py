"""benchmarks/tables.py's seed aggregation for the equal-wall-time matrix (docs/benchmarks.md), by hand."""

import pytest

from benchmarks.tables import matrix_markdown, matrix_summary


def _run(arm, seed, student, acc, balance=0.9):
    return {"arm": arm, "seed": seed, "student": student, "test_accuracy": acc, "val_accuracy": acc,
            "ratio_to_teacher": acc / 0.99, "pool_balance": balance, "label_balance": 1.0, "wall_s": 100.0,
            "teacher_confidence": 0.9, "diversity_ratio_to_real": 0.5, "epochs": 10, "kd_steps": 100}


def test_mean_and_sample_std_over_seeds_and_the_checks():
    runs = [_run("dfmscd", 0, "a", 0.97), _run("dfmscd", 1, "a", 0.99),
            _run("ablation", 0, "a", 0.90, 0.1), _run("ablation", 1, "a", 0.92, 0.1),
            _run("preset_single", 0, "a", 0.99), _run("preset_single", 1, "a", 0.99)]
    s = matrix_summary({"runs": runs})
    row = s["rows"]["dfmscd/a"]
    assert row["test_accuracy"][0] == pytest.approx(0.98)
    assert row["test_accuracy"][1] == pytest.approx(0.02 ** 0.5 * 0.1)  # sqrt(((-.01)^2 + .01^2) / 1)
    assert row["seeds"] == [0, 1]
    assert s["checks"]["every_student_ratio_ge_0.97"] is True  # 0.98 / 0.99
    assert s["checks"]["pool_balance_ge_0.8"] is True
    assert s["checks"]["dfmscd_ahead_of_ablation_every_student"] is True
    assert s["checks"]["dfmscd_ahead_of_preset_single_every_student"] is False  # 0.98 < 0.99
    table = matrix_markdown({"runs": runs, "summary": s, "teacher": {"architecture": "t", "test_accuracy": 0.99,
                             "val_accuracy": 0.98}, "dataset": "digits", "budget_s": 300, "seeds": [0, 1],
                             "preset": "balanced", "set": [], "machine": {"device": "cpu", "torch_threads": 1},
                             "real_within_class_distance": 2.0})
    assert "| DF-MSCD (N students, T s) | a | 98.00 ± 1.41% |" in table and "equal total wall time" in table
    assert "dfmscd_ahead_of_preset_single_every_student: MISSED" in table
