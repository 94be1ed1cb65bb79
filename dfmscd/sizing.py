"""Defaults that size themselves: the per-epoch work from the input, the device and the budget.

A preset's numbers fit one set-up: ``balanced`` was chosen on 8x8 digits on a 2-core CPU. With
``auto_size`` on, a run derives the work of each epoch instead:

* from the card (deterministic, so an epochs budget stays bit-reproducible): the generator's
  width and latent size, and the pool's capacity in bytes;
* from the seconds budget and the costs measured when the run starts: the KD steps per epoch, so
  that after warm-up synthesis takes ``synthesis_share`` of the time, and, when the budget cannot
  buy every student ``min_kd_updates`` at that share, a smaller synthesis share and warm-up.

Fields named in ``DistillConfig.pinned`` (set explicitly by the user) are never changed. The
figures behind each rule are in docs/benchmarks.md ("Sizing rules"). This module needs no torch:
the API gives the same advice at job creation from costs the workers measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

# The fields sizing may derive; every other field is the preset's or the user's.
SIZABLE = ("generator_width", "latent_dim", "pool_capacity", "synth_batch_size", "kd_batch_size", "lr_s",
           "kd_steps", "warmup_epochs")
GPU_BATCH = 256  # Fast-DFKD's synthesis and KD batch on a GPU
POOL_MAX_BYTES = 512 * 2**20  # the pool's images (uint8) at most; 20,000 images of 3x224x224 would be 3 GiB
MAX_KD_STEPS = 400  # Fast-DFKD's KD steps per epoch; more leaves the pool too few synthesis rounds to grow
MIN_SYNTHESIS_SHARE = 0.15  # below this the pool barely grows after warm-up
MIN_WARMUP_SHARE = 0.1
# The balanced preset's warm-up: 10 of 60 epochs, 1/6 of a seconds budget (docs/benchmarks.md, "Preset
# choices"). With auto_size the share comes from here, not from the config's warmup_epochs, which a
# run writes back as a derived value: a job restarted before its first checkpoint then plans the same.
WARMUP_SHARE = 10 / 60
# Up to 16x16 the students learn at half the preset's rate: the digits preset's 0.05. On 8x8 digits the
# preset's 0.1 (chosen on MNIST) cost mobilenetv2 ten points of validation accuracy (docs/benchmarks.md,
# "Sizing rules").
SMALL_INPUT_SIDE = 16
SMALL_INPUT_LR_SCALE = 0.5


@dataclass(frozen=True)
class Costs:
    """What one unit of work takes on the run's device, in seconds.

    ``kd_step_s``: one shared KD step (every student's forward and backward on one KD batch, the
    cheaper students' extra rounds included, the teacher's forward on each batch);
    ``synth_step_s``: one synthesis step of one generator (all inner steps), after warm-up (with the
    students' adversarial passes); ``warmup_synth_step_s``: the same without them."""

    kd_step_s: float
    synth_step_s: float
    warmup_synth_step_s: float
    generators: int
    kd_rates: tuple[int, ...]  # updates per shared step, per student
    overhead_s: float = 0.0  # set-up, final evaluation and checkpoints: time no epoch gets


@dataclass(frozen=True)
class Advice:
    """What a budget buys, for the job's warnings, events, CLI and dashboard."""

    epochs: int
    warmup_epochs: int
    kd_steps_per_epoch: int
    kd_updates: dict[str, int]  # per student
    min_kd_updates: int
    synthesis_share: float
    warmup_share: float
    min_budget_s: float | None  # the smallest seconds budget that buys every student the floor, at the default shares
    below_floor: bool

    def message(self, device: str) -> str:
        ups = ", ".join(f"{n} {u}" for n, u in self.kd_updates.items())
        text = (f"on {device} this budget buys about {self.epochs} epochs ({self.warmup_epochs} of warm-up), "
                f"{self.kd_steps_per_epoch} KD steps per epoch, and KD updates per student: {ups}")
        if self.below_floor and self.min_budget_s is not None:
            text += (f"; below the {self.min_kd_updates} updates per student the defaults need: give at least "
                     f"{format_seconds(self.min_budget_s)} on this device")
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    values: dict[str, Any]  # derived field values (pinned fields left out)
    advice: Advice | None  # None without a seconds budget or without costs
    notes: list[str] = field(default_factory=list)


def format_seconds(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds)} s"


def shape_values(config: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, cuda: bool) -> dict[str, Any]:
    """The card- and device-derived values (deterministic).

    * Generator: 32 wide with a 64-d latent up to 16x16 (the digits preset); above that, Fast-DFKD's
      64 and 256 on a GPU, and half the width on a CPU, where the generator would otherwise cost
      more than the teacher's forward pass (width 64 at 32x32: ~115 M multiply-adds per image against
      resnet20's ~41 M). The latent has room for the class embedding (at least the next power of
      two above the class count).
    * Students' learning rate: half the preset's up to 16x16 (the digits preset's rate), the preset's above.
    * Batches: on a GPU Fast-DFKD's 256 (synthesis and KD), with the students' learning rate
      scaled linearly from the preset's batch; on a CPU the preset's.
    * Pool: the preset's capacity, but never more than 512 MiB of images.
    """
    c, h, w = (int(v) for v in input_shape)
    small = max(h, w) <= SMALL_INPUT_SIDE
    if small:
        width, latent = 32, 64
    else:
        width, latent = (64, 256) if cuda else (32, 128)
    latent = max(latent, 2 ** math.ceil(math.log2(max(2, num_classes))))
    values: dict[str, Any] = {"generator_width": width, "latent_dim": latent,
                              "pool_capacity": max(256, min(int(config["pool_capacity"]), POOL_MAX_BYTES // (c * h * w)))}
    lr_s = float(config["lr_s"]) * (SMALL_INPUT_LR_SCALE if small else 1.0)
    if small:
        values["lr_s"] = lr_s
    if cuda:
        kd_batch = max(int(config["kd_batch_size"]), GPU_BATCH)
        values.update(synth_batch_size=max(int(config["synth_batch_size"]), GPU_BATCH), kd_batch_size=kd_batch,
                      lr_s=lr_s * kd_batch / int(config["kd_batch_size"]))
    return values


def costs_from(config: Mapping[str, Any], kd_ms: Sequence[float], teacher_forward_ms: float,
               synth_ms: Mapping[str, Any], rates: Sequence[int], generators: int, overhead_s: float) -> Costs:
    """``Costs`` from measured milliseconds: ``kd_ms`` per student (forward and backward on one KD batch),
    the teacher's forward on one KD batch, and at the synthesis batch ``synth_ms["teacher"]``,
    ``synth_ms["generator"]`` and ``synth_ms["students"]`` (one per student, frozen)."""
    kd_step = sum(r * ms for r, ms in zip(rates, kd_ms)) + max(rates, default=1) * teacher_forward_ms
    inner = int(config["inner_steps"])
    adversarial = float(sum(synth_ms["students"])) if (float(config["student_adv"]) > 0 or float(config["adv"]) > 0) else 0.0
    final = teacher_forward_ms * int(config["synth_batch_size"]) / int(config["kd_batch_size"])  # the pool's labels
    warm = inner * (float(synth_ms["generator"]) + float(synth_ms["teacher"])) + final
    return Costs(kd_step_s=kd_step / 1000.0, synth_step_s=(warm + inner * adversarial) / 1000.0,
                 warmup_synth_step_s=warm / 1000.0, generators=generators, kd_rates=tuple(rates), overhead_s=overhead_s)


def kd_steps_for_share(costs: Costs, share: float) -> int:
    """KD steps per epoch that leave ``share`` of an epoch's time to synthesis."""
    synth = costs.generators * costs.synth_step_s
    steps = synth * (1.0 - share) / max(share, 1e-6) / max(costs.kd_step_s, 1e-9)
    return int(min(MAX_KD_STEPS, max(1, round(steps))))


def _epoch_s(costs: Costs, kd_steps: int) -> float:
    """Seconds of one epoch after warm-up: every generator's synthesis step and ``kd_steps`` KD steps."""
    return costs.generators * costs.synth_step_s + kd_steps * costs.kd_step_s


def replan(costs: Costs, remaining_s: float, done: Sequence[int], share: float, floor: int,
           names: Sequence[str]) -> Advice:
    """The rest of a run, from costs measured on its first full epoch: KD steps per epoch at ``share``,
    or at a smaller share (down to ``MIN_SYNTHESIS_SHARE``) while the rest of the budget would leave a
    student short of ``floor`` updates (``done``: each student's updates so far)."""
    lo = min(share, MIN_SYNTHESIS_SHARE)
    advice = None
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        s = share + (lo - share) * frac
        kd_steps = kd_steps_for_share(costs, s)
        epochs = int(max(0.0, remaining_s) // max(_epoch_s(costs, kd_steps), 1e-9))
        updates = {n: d + epochs * kd_steps * r for n, d, r in zip(names, done, costs.kd_rates)}
        advice = Advice(epochs, 0, kd_steps, updates, floor, s, 0.0, None, bool(floor) and min(updates.values()) < floor)
        if not advice.below_floor:
            break
    assert advice is not None
    return advice


def _buys(costs: Costs, budget_s: float, share: float, warmup_share: float, warmup_cap: int,
          names: Sequence[str]) -> tuple[Advice, int]:
    """What ``budget_s`` buys when warm-up ends, as the run ends it, at ``warmup_cap`` epochs or at
    ``warmup_share`` of the training time, whichever comes first."""
    kd_steps = kd_steps_for_share(costs, share)
    train_s = max(0.0, budget_s - costs.overhead_s)
    warm_step = max(costs.generators * costs.warmup_synth_step_s, 1e-9)
    warm_epochs = min(warmup_cap, int(train_s * warmup_share // warm_step))
    kd_epochs = int(max(0.0, train_s - warm_epochs * warm_step) // max(_epoch_s(costs, kd_steps), 1e-9))
    updates = {n: kd_epochs * kd_steps * r for n, r in zip(names, costs.kd_rates)}
    advice = Advice(kd_epochs + warm_epochs, warm_epochs, kd_steps, updates, 0, share, warmup_share, None, False)
    return advice, kd_steps


def budget_for_floor(costs: Costs, floor: int, share: float, warmup_share: float, warmup_cap: int) -> float:
    """Seconds that buy the cheapest-rated student ``floor`` updates at these shares (the warm-up
    ending at ``warmup_cap`` epochs or ``warmup_share`` of the time, whichever comes first)."""
    kd_steps = kd_steps_for_share(costs, share)
    per_epoch = kd_steps * min(costs.kd_rates or (1,))
    kd_s = math.ceil(floor / max(per_epoch, 1)) * _epoch_s(costs, kd_steps)
    by_share = kd_s / max(1e-6, 1.0 - warmup_share)
    return costs.overhead_s + min(by_share, kd_s + warmup_cap * costs.generators * costs.warmup_synth_step_s)


def plan_run(config: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, cuda: bool,
             budget_seconds: float | None, costs: Costs | None, names: Sequence[str]) -> Plan:
    """The derived values for a run of ``config`` (a DistillConfig dump), and what its budget buys.

    With ``auto_size`` off nothing is derived (the advice is still given). Pinned fields keep their
    values; derived ones replace the preset's."""
    pinned = set(config.get("pinned") or ())
    auto = bool(config.get("auto_size"))
    values: dict[str, Any] = {}
    notes: list[str] = []
    if auto:
        values.update({k: v for k, v in shape_values(config, input_shape, num_classes, cuda).items() if k not in pinned})
    if budget_seconds is None or costs is None:
        return Plan(values, None, notes)
    floor = int(config.get("min_kd_updates") or 0)
    epochs = max(1, int(config["epochs"]))
    if auto and "warmup_epochs" not in pinned:
        default_warm = WARMUP_SHARE
    else:
        default_warm = min(1.0, float(config["warmup_epochs"]) / epochs)
    default_share = float(config.get("synthesis_share") or 0.3)
    share, warm = default_share, default_warm
    if not auto or "kd_steps" in pinned:
        share = _share_of(costs, int(config["kd_steps"]))

    def warm_cap(w: float) -> int:  # the warm-up epochs the run is given (as written back below)
        if auto and "warmup_epochs" not in pinned:
            return max(0, min(epochs - 1, round(w * epochs)))
        return int(config["warmup_epochs"])

    advice, kd_steps = _buys(costs, budget_seconds, share, warm, warm_cap(warm), names)
    if auto and floor and min(advice.kd_updates.values(), default=0) < floor:
        # Too little time for the floor at the default shares: spend less on synthesis and warm-up,
        # as far as the minimum shares, before giving up and advising a larger budget.
        lo_share = share if "kd_steps" in pinned else min(share, MIN_SYNTHESIS_SHARE)
        lo_warm = warm if "warmup_epochs" in pinned else min(warm, MIN_WARMUP_SHARE)
        for frac in (0.25, 0.5, 0.75, 1.0):
            s = share + (lo_share - share) * frac
            w = warm + (lo_warm - warm) * frac
            advice, kd_steps = _buys(costs, budget_seconds, s, w, warm_cap(w), names)
            if min(advice.kd_updates.values(), default=0) >= floor:
                break
        if advice.synthesis_share != default_share or advice.warmup_share != default_warm:
            notes.append(f"the budget is short of the {floor} KD updates per student at the default shares: "
                         f"synthesis share {default_share:.2f} -> {advice.synthesis_share:.2f}, "
                         f"warm-up share {default_warm:.2f} -> {advice.warmup_share:.2f}")
    if auto and "kd_steps" not in pinned:
        values["kd_steps"] = kd_steps
    if auto and "warmup_epochs" not in pinned:
        values["warmup_epochs"] = warm_cap(advice.warmup_share)
    below = bool(floor) and min(advice.kd_updates.values(), default=0) < floor
    min_budget = budget_for_floor(costs, floor, default_share, default_warm, warm_cap(default_warm)) if floor else None
    advice = Advice(advice.epochs, advice.warmup_epochs, advice.kd_steps_per_epoch, advice.kd_updates, floor,
                    advice.synthesis_share, advice.warmup_share, min_budget, below)
    return Plan(values, advice, notes)


def _share_of(costs: Costs, kd_steps: int) -> float:
    """The synthesis share a fixed number of KD steps per epoch gives."""
    synth = costs.generators * costs.synth_step_s
    return synth / max(synth + kd_steps * costs.kd_step_s, 1e-9)


__all__ = ["Advice", "Costs", "Plan", "SIZABLE", "budget_for_floor", "costs_from", "replan", "format_seconds", "kd_steps_for_share",
           "plan_run", "shape_values"]
