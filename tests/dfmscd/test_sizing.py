"""Self-sizing defaults: the rules, checked against figures worked out by hand."""

from __future__ import annotations

import pytest

from dfmscd import sizing
from dfmscd.config import DistillConfig, PRESETS, resolve_config
from dfmscd.sizing import Costs, costs_from, kd_steps_for_share, plan_run, shape_values


def _cfg(**kw) -> dict:
    return resolve_config("balanced", kw).model_dump()


def test_the_sizable_fields_are_the_ones_resolve_config_pins() -> None:
    from dfmscd.config import _SIZABLE_NAMES

    assert tuple(sizing.SIZABLE) == _SIZABLE_NAMES
    cfg = resolve_config("balanced", {"kd_steps": 50, "seed": 3, "lr_g": 0.02})
    assert cfg.pinned == ["kd_steps"]  # seed and lr_g are not derived, so pinning them means nothing
    assert resolve_config("balanced").pinned == [] and resolve_config("balanced").auto_size
    assert not resolve_config("quality").auto_size and not resolve_config("fast").auto_size


def test_shape_rules_keep_the_digits_preset_and_scale_up() -> None:
    cfg = _cfg()
    assert shape_values(cfg, (1, 8, 8), 10, cuda=False) == {
        "generator_width": PRESETS["balanced"]["generator_width"], "latent_dim": PRESETS["balanced"]["latent_dim"],
        "pool_capacity": PRESETS["balanced"]["pool_capacity"],
        "lr_s": pytest.approx(PRESETS["balanced"]["lr_s"] * sizing.SMALL_INPUT_LR_SCALE)}  # the digits preset's 0.05
    assert "lr_s" not in shape_values(cfg, (1, 28, 28), 10, cuda=False)  # MNIST and up: the preset's rate
    cifar_cpu = shape_values(cfg, (3, 32, 32), 10, cuda=False)
    assert (cifar_cpu["generator_width"], cifar_cpu["latent_dim"]) == (32, 128)
    cifar_gpu = shape_values(cfg, (3, 32, 32), 10, cuda=True)
    assert (cifar_gpu["generator_width"], cifar_gpu["latent_dim"]) == (64, 256)
    assert (cifar_gpu["synth_batch_size"], cifar_gpu["kd_batch_size"]) == (256, 256)
    assert cifar_gpu["lr_s"] == pytest.approx(PRESETS["balanced"]["lr_s"] * 256 / 128)  # linear scaling with the batch
    assert shape_values(cfg, (3, 32, 32), 200, cuda=False)["latent_dim"] == 256  # room for 200 class embeddings
    # 512 MiB of 3x224x224 uint8 images: 3566, not the preset's 20,000 (2.8 GiB)
    assert shape_values(cfg, (3, 224, 224), 10, cuda=False)["pool_capacity"] == 512 * 2**20 // (3 * 224 * 224) == 3566


def test_costs_from_measured_pieces() -> None:
    cfg = _cfg()  # inner_steps 4, synth batch 128, kd batch 128, adversarial terms on
    costs = costs_from(cfg, kd_ms=[100.0, 20.0], teacher_forward_ms=30.0,
                       synth_ms={"teacher": 50.0, "generator": 10.0, "students": [70.0, 15.0]},
                       rates=[1, 4], generators=2, overhead_s=5.0)
    assert costs.kd_step_s == pytest.approx((100 * 1 + 20 * 4 + 4 * 30) / 1000)  # 0.300
    assert costs.warmup_synth_step_s == pytest.approx((4 * (10 + 50) + 30) / 1000)  # 0.270
    assert costs.synth_step_s == pytest.approx((4 * (10 + 50) + 30 + 4 * 85) / 1000)  # 0.610
    assert (costs.generators, costs.kd_rates, costs.overhead_s) == (2, (1, 4), 5.0)


def test_kd_steps_for_a_synthesis_share() -> None:
    costs = Costs(kd_step_s=0.5, synth_step_s=2.0, warmup_synth_step_s=1.0, generators=3, kd_rates=(1, 1, 1))
    # one epoch synthesizes for 6 s; at share 0.3 KD gets 6 * 0.7 / 0.3 = 14 s = 28 steps
    assert kd_steps_for_share(costs, 0.3) == 28
    assert kd_steps_for_share(costs, 0.6) == 8  # 6 * 0.4 / 0.6 / 0.5 = 8
    assert kd_steps_for_share(costs, 0.001) == sizing.MAX_KD_STEPS


def test_plan_with_enough_budget_keeps_the_default_shares() -> None:
    cfg = _cfg(min_kd_updates=100)  # warm-up 10/60 of the time, synthesis share 0.3
    costs = Costs(kd_step_s=0.5, synth_step_s=2.0, warmup_synth_step_s=1.0, generators=3, kd_rates=(1, 4, 1))
    plan = plan_run(cfg, (1, 8, 8), 10, False, 1200.0, costs, ["a", "b", "c"])
    a = plan.advice
    # train 1200 s: warm-up ends at 10 epochs of 3 s (before 1/6 of the time, 66 such epochs), as the
    # run ends it; then epochs of 6 + 28 * 0.5 = 20 s: 1170 s buy 58
    assert (a.warmup_epochs, a.kd_steps_per_epoch, a.epochs) == (10, 28, 68)
    assert a.warmup_epochs == plan.values["warmup_epochs"]
    assert a.kd_updates == {"a": 58 * 28, "b": 58 * 28 * 4, "c": 58 * 28}
    assert plan.values["kd_steps"] == 28 and plan.values["warmup_epochs"] == 10
    assert not a.below_floor and plan.notes == []
    # the floor of 100 at the default shares: ceil(100 / 28) = 4 epochs of 20 s, / (1 - 1/6) = 96 s
    assert a.min_budget_s == pytest.approx(96.0)


def test_a_short_budget_trades_synthesis_and_warmup_for_updates_then_advises() -> None:
    cfg = _cfg(min_kd_updates=1624)
    costs = Costs(kd_step_s=0.5, synth_step_s=2.0, warmup_synth_step_s=1.0, generators=3, kd_rates=(1,))
    plan = plan_run(cfg, (1, 8, 8), 10, False, 1200.0, costs, ["a"])
    # at the default shares: 58 epochs x 28 = 1624 updates: exactly the floor
    assert plan.advice.kd_updates == {"a": 1624} and not plan.advice.below_floor
    plan = plan_run(_cfg(min_kd_updates=1800), (1, 8, 8), 10, False, 1200.0, costs, ["a"])
    assert plan.advice.synthesis_share < 0.3 and plan.advice.warmup_share < 10 / 60
    assert plan.advice.kd_updates["a"] >= 1800 and not plan.advice.below_floor and plan.notes
    assert plan.values["kd_steps"] > 28
    short = plan_run(_cfg(min_kd_updates=2000), (1, 8, 8), 10, False, 100.0, costs, ["a"])
    assert short.advice.below_floor
    assert short.advice.synthesis_share == pytest.approx(sizing.MIN_SYNTHESIS_SHARE)
    assert short.advice.min_budget_s > 100.0
    assert "give at least" in short.advice.message("cpu (test)")


def test_the_warmup_a_plan_counts_ends_where_the_run_ends_it() -> None:
    # warm-up epochs far cheaper than the rest: the run stops warm-up at its epoch count, not at 1/6
    # of the time, and the advice says so (the rest of the time goes to KD epochs)
    costs = Costs(kd_step_s=0.5, synth_step_s=2.0, warmup_synth_step_s=0.01, generators=3, kd_rates=(1,))
    plan = plan_run(_cfg(min_kd_updates=0), (1, 8, 8), 10, False, 600.0, costs, ["a"])
    assert plan.advice.warmup_epochs == plan.values["warmup_epochs"] == 10
    assert plan.advice.epochs - plan.advice.warmup_epochs == int((600.0 - 10 * 0.03) // 20.0)
    # warm-up epochs dearer than 1/6 of the time allows: the share ends it first
    dear = Costs(kd_step_s=0.5, synth_step_s=2.0, warmup_synth_step_s=5.0, generators=3, kd_rates=(1,))
    plan = plan_run(_cfg(min_kd_updates=0), (1, 8, 8), 10, False, 600.0, dear, ["a"])
    assert plan.advice.warmup_epochs == int(600.0 / 6 // 15.0) < plan.values["warmup_epochs"]


def test_pinned_fields_and_auto_size_off_are_left_alone() -> None:
    costs = Costs(kd_step_s=0.5, synth_step_s=2.0, warmup_synth_step_s=1.0, generators=3, kd_rates=(1,))
    pinned = plan_run(_cfg(kd_steps=7, generator_width=48), (3, 32, 32), 10, False, 1200.0, costs, ["a"])
    assert "kd_steps" not in pinned.values and "generator_width" not in pinned.values
    assert pinned.advice.kd_steps_per_epoch == 7  # the advice uses the pinned value
    off = plan_run(resolve_config("fast").model_dump(), (3, 32, 32), 10, False, 1200.0, costs, ["a"])
    assert off.values == {} and off.advice is not None
    assert plan_run(_cfg(), (3, 32, 32), 10, False, None, None, ["a"]).advice is None


def test_format_seconds() -> None:
    assert [sizing.format_seconds(s) for s in (30, 90.5, 3000, 7200)] == ["30 s", "2 min", "50 min", "2.0 h"]


def test_config_rejects_bad_sizing_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DistillConfig(synthesis_share=1.0)
    with pytest.raises(ValidationError):
        DistillConfig(min_kd_updates=-1)


def test_replanning_on_measured_costs_keeps_the_share_or_lowers_it_for_the_floor() -> None:
    costs = Costs(kd_step_s=0.4, synth_step_s=12.0, warmup_synth_step_s=0.0, generators=1, kd_rates=(1,))
    # share 0.3: 70 steps, epochs of 12 + 28 = 40 s, 250 of them in 10,000 s: 17,500 updates
    kept = sizing.replan(costs, 10_000.0, [0], 0.3, 500, ["a"])
    assert (kept.synthesis_share, kept.kd_steps_per_epoch, kept.epochs, kept.kd_updates) == (0.3, 70, 250, {"a": 17_500})
    # a floor of 20,000: 0.2625 gives 84 steps x 219 epochs = 18,396; 0.225 103 x 187 = 19,261; 0.1875 130 x 156 = 20,280
    lowered = sizing.replan(costs, 10_000.0, [0], 0.3, 20_000, ["a"])
    assert (lowered.synthesis_share, lowered.kd_steps_per_epoch, lowered.kd_updates["a"]) == (0.1875, 130, 20_280)
    assert not lowered.below_floor
    short = sizing.replan(costs, 100.0, [7], 0.3, 500, ["a"])
    assert short.synthesis_share == sizing.MIN_SYNTHESIS_SHARE and short.below_floor and short.kd_updates["a"] >= 7
