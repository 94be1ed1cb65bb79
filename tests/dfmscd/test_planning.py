"""The engine's side of sizing: flags for students that learnt too little, missing classes, the
calibration sample, and the fingerprint that ignores derived fields."""

from __future__ import annotations

import torch

from dfmscd.config import resolve_config
from dfmscd.engine.planning import derived_fields, fingerprint_config, missing_classes, student_flags
from dfmscd.engine.samples import pick_calibration
from dfmscd.synthesis import ImagePool


def test_students_below_half_agreement_are_flagged_with_the_likely_cause() -> None:
    flags = student_flags({"a": 0.9, "b": 0.3, "c": 0.49, "d": None}, {"a": 50, "b": 50, "c": 5000}, floor=1000)
    assert set(flags) == {"b", "c"}
    assert "30%" in flags["b"] and "too few KD updates (50, the defaults need 1000)" in flags["b"]
    assert "49%" in flags["c"] and "too small for this student" in flags["c"]
    assert student_flags({"a": 0.5}, {"a": 1}, floor=1000) == {}  # 0.5 itself is not below


def test_missing_classes_are_named_by_the_card() -> None:
    assert missing_classes([3, 0, 2, 0], ["cat", "dog", "emu", "fox"]) == ["dog", "fox"]
    assert missing_classes([0, 1], None) == ["0"]
    assert missing_classes([1, 1], ["a", "b"]) == []


def test_calibration_sample_is_even_over_classes_and_has_no_randomness() -> None:
    pool = ImagePool(100, (1, 2, 2), 3, "fifo", seed=0)
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    argmax = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    pool.add(images, argmax.clone(), argmax)
    picked = pick_calibration(pool, n=6)
    # newest first per class, in turns: class 0 -> 5, 4; class 1 -> 7, 6; class 2 -> 9, 8
    assert sorted(picked[:, 0, 0, 0].tolist()) == [4, 5, 6, 7, 8, 9]
    assert torch.equal(pick_calibration(pool, n=6), picked)
    assert pick_calibration(pool, n=100).shape[0] == 10  # never more than the pool holds


def test_derived_fields_are_not_part_of_the_fingerprint() -> None:
    auto = resolve_config("balanced", {"kd_steps": 30})
    assert "kd_steps" not in derived_fields(auto) and "warmup_epochs" in derived_fields(auto)
    a = fingerprint_config(auto)
    b = fingerprint_config(auto.model_copy(update={"warmup_epochs": 3, "generator_width": 48}))
    assert a == b and a["kd_steps"] == 30  # a pinned field stays in
    fixed = resolve_config("fast")
    assert derived_fields(fixed) == set() and fingerprint_config(fixed)["kd_steps"] == fixed.kd_steps


def test_first_full_epoch_recalibrates_the_kd_steps_and_says_so() -> None:
    from dfmscd.config import Budget
    from dfmscd.engine import Distiller, StudentSpec
    from synthetic_task import card, teacher

    events = []
    d = Distiller(teacher(), card(), [StudentSpec("resnet8")], resolve_config("balanced", {"min_kd_updates": 0}),
                  budget=Budget(seconds=60), callbacks=[events.append])
    d._session_start = d._clock()
    d._setup()
    d.sizing = {"derived": {"kd_steps": 20}, "budget_values": {"kd_steps": 20}, "calibrate": True, "device": "cpu (test)",
                "advice": {"synthesis_share": 0.3, "warmup_epochs": 2, "warmup_share": 0.1, "min_budget_s": None}}
    d._calibrate(synth_s=12.0, kd_s=4.0, kd_steps=10)  # 12 s of synthesis, 0.4 s a KD step: 70 steps at 0.3
    assert d.config.kd_steps == 70 and d.st.sizing["budget_values"]["kd_steps"] == 70
    assert d.sizing["calibrated"] == {"synthesis_s": 12.0, "kd_step_s": 0.4, "kd_steps": 70, "planned_kd_steps": 20,
                                      "synthesis_share": 0.3}
    assert not d.sizing["calibrate"] and d.sizing["advice"]["kd_steps_per_epoch"] == 70
    assert d.sizing["message"].startswith("on cpu (test) this budget buys")
    sized = [e for e in events if e.kind == "sizing"]
    assert len(sized) == 1 and sized[0].data["config"]["kd_steps"] == 70
    assert any(e.kind == "log" and "20 -> 70" in e.data["message"] for e in events)
