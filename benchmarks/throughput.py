"""Throughput of the DF-MSCD loop: synthesis images/s and KD steps/s, per phase, CPU or CUDA.

    OMP_NUM_THREADS=1 uv run python benchmarks/throughput.py                       # digits-sized, CPU
    uv run python benchmarks/throughput.py --device cuda --input 3,32,32 --teacher resnet34 \
        --students resnet18,wrn_16_2,mobilenetv2 --batch 256
    uv run python benchmarks/throughput.py --variants contiguous,channels_last,compile   # CPU layouts

It builds the engine exactly as a run does (``Distiller._setup``: the same teacher copy, BN hooks,
students, generators, pool and autocast), with a randomly initialised teacher (throughput does not
depend on the weights), then times

- ``synthesis``: one meta-synthesis step per generator (inner steps + meta step + the images
  stored), as images per second;
- ``kd``: the KD step (pool batch → augmentation → teacher forward → all students fwd+bwd +
  optimiser steps), as steps per second and images per second;
- one KD step's pieces: the teacher forward and each student's fwd+bwd alone.

On CUDA it also counts the FLOPs of one synthesis step and one KD step
(``torch.utils.flop_counter``) and reports achieved TFLOP/s against a bf16 matmul peak measured
on the same device (8192² ``torch.matmul`` under bf16). ``--variants`` compares memory layouts and
``torch.compile`` (students only) on the device given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def matmul_peak_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    s = _timed(lambda: torch.matmul(a, b), device, 3, repeats)
    return 2 * n**3 / s / 1e12


def _flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def build(args: argparse.Namespace, overrides: dict[str, Any]):
    from dfmscd.config import Budget, resolve_config
    from dfmscd.engine import Distiller, StudentSpec
    from dfmscd.io.card import ModelCard
    from dfmscd.models import create_model

    c, h, w = (int(v) for v in args.input.split(","))
    card = ModelCard(architecture=args.teacher, num_classes=args.classes, input_shape=(c, h, w),
                     mean=tuple([0.5] * c), std=tuple([0.25] * c))
    torch.manual_seed(0)
    teacher = create_model(args.teacher, args.classes, in_channels=c, image_size=h).eval()
    cfg = resolve_config(args.preset, {"device": args.device, "synth_batch_size": args.batch,
                                       "kd_batch_size": args.batch, **overrides})
    d = Distiller(teacher, card, [StudentSpec(s) for s in args.students.split(",")], cfg, Budget(epochs=1))
    d._session_start = time.perf_counter()
    d._setup()
    return d


def measure(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if variant == "channels_last":
        overrides["channels_last"] = True
    elif variant in ("contiguous", "compile"):
        overrides["channels_last"] = False
    if args.autocast:
        overrides["autocast"] = args.autocast
    d = build(args, overrides)
    device = d.device
    if variant == "compile":
        d.students.modules = [torch.compile(m) for m in d.students.modules]
    d._synthesis_phase(adversarial=True, units=1)  # fills the pool (and warms up)
    n_gen = len(d.mixture)
    synth_s = _timed(lambda: d._synthesis_phase(adversarial=True, units=1), device, 1, args.repeats)
    cfg = d.config

    def kd_step() -> None:
        idx = d.pool.sample_balanced(cfg.kd_batch_size)
        x = d._to_input(d.pool.gather(idx), augment=True)
        with torch.no_grad(), d.students.autocast():
            t = d.teacher(x).float()
        d.students.kd_step(x, t)

    kd_s = _timed(kd_step, device, 2, args.repeats)
    x = d._to_input(d.pool.gather(d.pool.sample_indices(cfg.kd_batch_size)), augment=True)

    def teacher_fwd() -> None:
        with torch.no_grad(), d.students.autocast():
            d.teacher(x)

    parts = {"teacher_forward_ms": 1e3 * _timed(teacher_fwd, device, 2, args.repeats)}
    for name, m in zip(d.names, d.students.modules):
        def fwd_bwd(m=m) -> None:
            with d.students.autocast():
                out = m(x).float()
            out.sum().backward()
            m.zero_grad(set_to_none=True)
        parts[f"{name}_fwd_bwd_ms"] = 1e3 * _timed(fwd_bwd, device, 2, args.repeats)
    out: dict[str, Any] = {
        "variant": variant,
        "device": str(device),
        "precision": {"autocast": str(d.amp_dtype) if d.amp_dtype else None,
                      "channels_last": d.memory_format == torch.channels_last, "pool": str(d.pool.device)},
        "generators": n_gen,
        "synthesis_images_per_s": n_gen * cfg.synth_batch_size / synth_s,
        "synthesis_round_s": synth_s,
        "kd_steps_per_s": 1.0 / kd_s,
        "kd_images_per_s": cfg.kd_batch_size / kd_s,
        **{k: round(v, 2) for k, v in parts.items()},
    }
    if device.type == "cuda":
        f_synth = _flops(lambda: d._synthesis_phase(adversarial=True, units=1))
        f_kd = _flops(kd_step)
        peak = matmul_peak_tflops(device)
        out.update({
            "bf16_matmul_peak_tflops": peak,
            "synthesis_tflops": f_synth / synth_s / 1e12,
            "kd_tflops": f_kd / kd_s / 1e12,
            "synthesis_share_of_peak": f_synth / synth_s / 1e12 / peak,
            "kd_share_of_peak": f_kd / kd_s / 1e12 / peak,
        })
    d.hooks.remove()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--students", default="resnet8,vgg8,mobilenetv2")
    p.add_argument("--input", default="1,8,8", help="C,H,W")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--preset", default="balanced")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", choices=("auto", "off", "bf16"), help="override the config's autocast")
    p.add_argument("--variants", default="default", help="comma list of: default, contiguous, channels_last, compile")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for variant in args.variants.split(","):
        r = measure(args, variant.strip())
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        from dfmscd.report import write_json_atomic

        write_json_atomic(args.json, {"args": vars(args) | {"json": str(args.json)}, "threads": torch.get_num_threads(),
                                      "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
