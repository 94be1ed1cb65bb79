"""What each student costs per KD step: an estimate before a run, a measurement after it.

All students train in the same KD steps, so under a wall-clock budget one slow student slows
every student's training (a mobilenetv2 next to resnet8/vgg8 on 8x8 inputs took ~90 % of each
step and cut the others' accuracy by 10-25 points). ``estimate_cost`` ranks students before a
job runs; ``measure_kd_step_ms`` reports the real figure in the run's report.

The estimate is the number of activation elements one forward pass writes (leaf layers, batch
1, at the card's input shape). FLOPs were tried first and mis-rank exactly the costly case: at
1x8x8, mobilenetv2 has fewer FLOPs than vgg8 but one CPU KD step takes 8x longer; its
expanded depthwise blocks write 11x more activations. Measured on CPU (fwd+bwd, batch 64),
ms per step / activation elements tracked within a factor of ~2.5 across resnet8/20,
wrn_16_1, vgg8, mobilenetv2 and shufflenetv2 at 8x8 and 32x32.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

# A student is "dominant" when its estimated cost is at least this share of the whole step,
# i.e. it costs at least twice all the other students together.
DOMINANT_SHARE = 2 / 3


def estimate_cost(module: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Activation elements written by the leaf layers in one forward pass of one image."""
    import torch  # deferred on purpose: the web API imports dominant_student_warning and must not load torch

    total = [0]

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if not any(True for _ in m.children())]
    was_training = module.training
    module.eval()
    try:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        with torch.no_grad():
            module(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return int(total[0])


def kd_rates(costs: Sequence[int | float], max_rate: int) -> list[int]:
    """KD updates per shared step for each student: ``floor(max cost / own cost)``, in [1, max_rate].

    Under a time budget the costliest student sets the pace of the shared steps; a student that
    costs a quarter of it can take four updates in the time of one without slowing the others
    more than its own cost. A cost that is unknown or not positive gets 1 (lockstep)."""
    if max_rate < 1:
        raise ValueError("max_rate must be >= 1")
    known = [float(c) for c in costs if c is not None and c > 0]
    if not known:
        return [1] * len(costs)
    top = max(known)
    return [1 if (c is None or c <= 0) else max(1, min(max_rate, int(top // float(c)))) for c in costs]


def dominant_student_warning(costs: Mapping[str, int | float | None]) -> str | None:
    """A warning when one student takes most of every shared KD step (None: no such student).

    Needs two or more students with a known cost; students of unknown cost (None) disable it.
    """
    if len(costs) < 2 or any(c is None or c <= 0 for c in costs.values()):
        return None
    total = float(sum(costs.values()))  # type: ignore[arg-type]
    name, cost = max(costs.items(), key=lambda kv: kv[1])  # type: ignore[arg-type,return-value]
    share = float(cost) / total
    if share < DOMINANT_SHARE:
        return None
    others = ", ".join(n for n in costs if n != name)
    return (
        f"student {name!r} is estimated to take {share:.0%} of each KD step (students share every step); "
        f"under a time budget it slows {others} as well, which then train on fewer steps. Consider a separate "
        f"job for {name!r}, kd_max_rate > 1 (cheaper students take several updates per shared step), "
        f"or an epochs budget (estimate: activations per image at the card's input shape; "
        f"warning when one student is >= {DOMINANT_SHARE:.0%} of the total)"
    )


def measure_kd_step_ms(modules: Sequence[nn.Module], x: torch.Tensor, repeats: int = 1) -> list[float]:
    """Milliseconds of one forward + backward per student alone on ``x``, on copies of the students.

    The copies keep the students (weights, BN statistics, gradients) and the RNG streams untouched,
    so a run's results do not depend on being measured. One warm-up pass is not timed.
    """
    import torch  # deferred on purpose, as in estimate_cost

    out: list[float] = []
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for module in modules:
            clone = copy.deepcopy(module).train()
            clone(x).float().sum().backward()  # warm-up (allocator, cuDNN autotune)
            sync()
            t0 = time.perf_counter()
            for _ in range(repeats):
                clone.zero_grad(set_to_none=True)
                clone(x).float().sum().backward()
            sync()
            out.append((time.perf_counter() - t0) * 1000.0 / repeats)
            del clone
    return out


def measure_backward_ms(module: nn.Module, make_input: Callable[[], "torch.Tensor | tuple[torch.Tensor, ...]"],
                        repeats: int = 1, device: "torch.device | None" = None, frozen: bool = False) -> float:
    """Milliseconds of one forward and one backward of ``module`` on a copy, gradients flowing to
    the input: what a frozen teacher or student costs a synthesis step, and a generator's own cost.

    ``make_input`` builds fresh inputs (float tensors get ``requires_grad``); ``frozen`` times the copy
    in eval mode without parameter gradients. The module's parameters, BN statistics and the RNG
    streams stay untouched; one warm-up pass is not timed."""
    import torch  # deferred on purpose, as in estimate_cost

    clone = copy.deepcopy(module)
    if frozen:
        clone.eval().requires_grad_(False)
    dev = device or next((p.device for p in clone.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def once() -> None:
        args = make_input()
        args = args if isinstance(args, tuple) else (args,)
        args = tuple(a.detach().requires_grad_() if a.is_floating_point() else a for a in args)
        out = clone(*args)
        out.float().sum().backward()

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        once()
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            clone.zero_grad(set_to_none=True)
            once()
        sync()
    del clone
    return (time.perf_counter() - t0) * 1000.0 / repeats


__all__ = ["DOMINANT_SHARE", "dominant_student_warning", "estimate_cost", "measure_backward_ms", "measure_kd_step_ms"]
