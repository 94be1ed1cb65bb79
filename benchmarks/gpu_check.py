"""One prepared check for a lent GPU (one H100 or H200): CIFAR-10, a ResNet-34 teacher trained in about two
minutes, then DF-MSCD into resnet18, wrn_16_1 and mobilenetv2 for a fixed wall budget, in at most 7 minutes.

What it measures, in this order, each figure written to ``gpu_check.json`` (atomically rewritten after
every figure, so a run cut short still leaves what it had) and printed as it comes; ``gpu_check.md``
summarises them at the end (also after an interrupt):

1. ``matmul_peak``: the achieved bf16 matmul rate (square products of 8192 and 16384, random data,
   rounds of back-to-back products timed with CUDA events; the best size's median round), the
   ceiling the other TFLOP/s figures are set against (``--tiny``, on a CPU: float32, the dtype it computes in).
2. ``data``: CIFAR-10 decoded from ``--data-dir``/cifar10-jpeg.tar.gz by ``benchmarks.data.load_dataset``
   (a JPEG re-encoding of CIFAR-10; a fixed stratified 5,000-image validation split comes out of train).
3. ``teacher``: a CIFAR-10 ``resnet34`` trained for ``--teacher-budget`` seconds of wall time (SGD with
   Nesterov momentum, batch 512, a one-cycle learning rate over the elapsed share of the budget, random
   4-pixel translations and flips on the GPU, bf16 autocast, channels-last, the data kept on the GPU);
   test accuracy, wall time, images/s and achieved TFLOP/s of its steps.
4. ``dfmscd``: ``dfmscd.engine.Distiller`` from that teacher to resnet18, wrn_16_1 and mobilenetv2 with
   the ``balanced`` preset on CUDA (the engine picks bf16 autocast and channels-last there, and
   ``auto_size`` derives the GPU batches) for ``--budget`` seconds of wall time: each student's test
   accuracy and its ratio to the teacher's, pool balance, synthesis images/s and KD steps/s (from the
   run's report) and the run's timing split.
5. ``kd_flops``: the FLOPs of one shared KD step, counted with ``torch.utils.flop_counter.FlopCounterMode``
   (the matmul and convolution operators PyTorch dispatches, forward and backward; elementwise work is
   not counted): the teacher's forward once per round plus each student's forward and backward times its
   KD updates per step (``kd_rates``), at the run's KD batch; times the report's KD steps/s, against the
   measured peak.
6. ``published``: the students' accuracies beside Fast-DFKD's published CIFAR-10 ResNet-34 -> ResNet-18
   figure (94.05%, after 0.28 GPU-hours of synthesis alone), with what differs: our budget is minutes,
   the data is a JPEG re-encoding, and the teacher is a two-minute one.

Preparation, here, once (from the repository root; the archive beside the checkout does not travel to
the device, so it is copied into an ignored folder of the repository and carried; pydantic is not
installed there, so dfmscd's own imports need it carried as wheels, about 2.8 MB; typing-extensions
too, as pydantic-core needs at least 4.16)::

    echo /.gpudata/ >> .git/info/exclude && mkdir -p .gpudata && cp ../shared/data/cifar10-jpeg.tar.gz .gpudata/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \\
        pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0

The device call (``run``), carry ``[".whl", ".gpudata"]`` (about 22.5 MB with the 19.6 MB archive),
timeout_s 480::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; PYTHONUNBUFFERED=1 timeout -s INT -k 15 420 python3 benchmarks/gpu_check.py --data-dir .gpudata --out-dir $OUT 2>&1 | tee $OUT/log.txt

``timeout -s INT`` lets the script write its summary if it overruns. Everything it needs besides the
wheels is there (torch, torchvision, numpy, scikit-learn, pillow; timm and httpx, which dfmscd does not
import for a run). ``--tiny`` runs every step on the CPU in about a minute (a resnet8 teacher, small
students, 2,000 training images, budgets of seconds): tests/benchmarks/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``dfmscd`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.data import Dataset, load_dataset
from benchmarks.machine import machine_info
from benchmarks.train import accuracy

RESULTS_DIR = Path(__file__).resolve().parent / "results"
JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"
# Fang et al., "Up to 100x Faster Data-free Knowledge Distillation" (AAAI 2022), CIFAR-10, ResNet-34 -> ResNet-18.
FAST_DFKD = {"source": "Fast-DFKD (Fang et al., AAAI 2022), CIFAR-10, ResNet-34 teacher -> ResNet-18 student",
             "student": "resnet18", "test_accuracy": 0.9405, "synthesis_gpu_hours": 0.28}
SECTIONS = ("machine", "matmul_peak", "data", "teacher", "dfmscd", "kd_flops", "published")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run does: the full check on a GPU, or ``--tiny``'s CPU rehearsal of every step."""

    teacher: str = "resnet34"
    students: tuple[str, ...] = ("resnet18", "wrn_16_1", "mobilenetv2")
    teacher_batch: int = 512
    teacher_lr: float = 0.2
    matmul_sizes: tuple[int, ...] = (8192, 16384)
    matmul_rounds: int = 5
    matmul_per_round: int = 10
    train_subset: int | None = None  # images of the training split kept (None: all)
    eval_subset: int | None = None  # test and validation images kept
    overrides: tuple[tuple[str, Any], ...] = ()  # DF-MSCD config fields beyond the preset


FULL = Plan()
TINY = Plan(teacher="resnet8", students=("resnet8", "wrn_16_1"), teacher_batch=128, teacher_lr=0.1,
            matmul_sizes=(256, 512), matmul_rounds=3, matmul_per_round=2, train_subset=2000, eval_subset=500,
            # pinned (sizing leaves them be): no warm-up and a few KD steps per epoch, so that even a budget
            # of seconds on a busy CPU reaches the KD phase
            overrides=(("synth_batch_size", 16), ("inner_steps", 1), ("kd_batch_size", 32), ("pool_capacity", 2000),
                       ("warmup_epochs", 0), ("kd_steps", 6), ("min_kd_updates", 10)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- results
class Results:
    """The figures so far, rewritten atomically to ``gpu_check.json`` after each one."""

    def __init__(self, out_dir: Path, args: argparse.Namespace) -> None:
        self.out_dir = out_dir
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "complete": False, "errors": {},
        }

    def put(self, section: str, figures: dict[str, Any]) -> None:
        self.data[section] = {**self.data.get(section, {}), **figures}
        self.save()

    def save(self) -> None:
        from dfmscd.report import write_json_atomic

        self.data["wall_s"] = round(time.perf_counter() - self.started, 2)
        write_json_atomic(self.out_dir / JSON_NAME, self.data)


# ---------------------------------------------------------------------------------------------- 1. peak
def matmul_peak(device: torch.device, sizes: tuple[int, ...], rounds: int, per_round: int) -> dict[str, Any]:
    """Square matmuls on random data in the dtype the networks compute in (bf16 on a GPU, float32 on a
    CPU, where bf16 products are emulated): per size, rounds of ``per_round`` back-to-back products (CUDA
    events on a GPU, perf_counter on a CPU); the peak is the best size's median round."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "data": "random normal", "sizes": {}}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            torch.matmul(a, b)
        _sync(device)
        rates = []
        for _ in range(rounds):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(per_round):
                    torch.matmul(a, b)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                for _ in range(per_round):
                    torch.matmul(a, b)
                seconds = time.perf_counter() - t0
            rates.append(2 * n**3 * per_round / seconds / 1e12)
        rates.sort()
        out["sizes"][str(n)] = {"median_tflops": rates[len(rates) // 2], "best_tflops": rates[-1]}
        del a, b
    best = max(out["sizes"], key=lambda k: out["sizes"][k]["median_tflops"])
    out.update(peak_tflops=out["sizes"][best]["median_tflops"], peak_size=int(best),
               method=f"{rounds} rounds of {per_round} products per size after 2 warm-ups; "
                      + ("CUDA events" if device.type == "cuda" else "perf_counter"))
    return out


# ---------------------------------------------------------------------------------------------- 2. data
def _subset(data: Dataset, train: int | None, evaluation: int | None, seed: int) -> Dataset:
    """A fixed random subset of each split (the statistics in the card stay the full training split's)."""
    if train is None and evaluation is None:
        return data
    gen = torch.Generator().manual_seed(seed)

    def pick(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if n is None or n >= len(y):
            return x, y
        idx = torch.randperm(len(y), generator=gen)[:n].sort().values
        return x[idx], y[idx]

    x_tr, y_tr = pick(data.x_train, data.y_train, train)
    x_va, y_va = pick(data.x_val, data.y_val, evaluation)
    x_te, y_te = pick(data.x_test, data.y_test, evaluation)
    return dataclasses.replace(data, x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, x_test=x_te, y_test=y_te)


# ---------------------------------------------------------------------------------------------- 3. teacher
def crop_flip(x: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """``benchmarks.data.random_crop_flip`` with the random numbers drawn on the data's device, so a
    training step never waits for a host-to-device copy (replicate padding, as there)."""
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=dev)
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=dev)
    rows = (dy + torch.arange(h, device=dev)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=dev)).view(n, 1, 1, w)
    x = padded[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols]
    if flip:
        x = torch.where((torch.rand(n, device=dev) < 0.5).view(n, 1, 1, 1), x.flip(3), x)
    return x


def one_cycle(fraction: float, peak: float, warm: float = 0.15) -> float:
    """Linear warm-up to ``peak`` over the first ``warm`` of the budget, then linear decay to zero."""
    if fraction < warm:
        return peak * max(fraction, 0.02) / warm
    return peak * max(0.0, 1.0 - fraction) / (1.0 - warm)


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def train_step_flops(model: nn.Module, batch: int, input_shape: tuple[int, ...], device: torch.device,
                     amp: bool, layout: torch.memory_format, train: bool = True) -> int:
    """FlopCounterMode's count of one forward and backward (or forward only) on a copy of ``model``."""
    m = copy.deepcopy(model).to(device).to(memory_format=layout).train(train)
    x = torch.randn(batch, *input_shape, device=device).contiguous(memory_format=layout)

    def step() -> None:
        if not train:
            with torch.no_grad(), _autocast(device, amp):
                m(x)
            return
        with _autocast(device, amp):
            out = m(x).float()
        out.sum().backward()

    flops = count_flops(step)
    del m, x
    return flops


def train_teacher(model: nn.Module, data: Dataset, device: torch.device, budget_s: float, batch_size: int,
                  peak_lr: float, seed: int, weight_decay: float = 5e-4) -> dict[str, Any]:
    """Cross-entropy for ``budget_s`` seconds of wall time, everything on ``device``."""
    torch.manual_seed(seed)
    cuda = device.type == "cuda"
    layout = torch.channels_last if (cuda or data.input_shape[0] == 3) else torch.contiguous_format
    model.to(device).to(memory_format=layout).train()
    x_all, y_all = data.x_train.to(device), data.y_train.to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    n = len(y_all)
    batch_size = min(batch_size, n)
    pad = max(1, data.input_shape[1] // 8)
    opt = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps, seen, epochs, loss = 0, 0, 0, None
    _sync(device)
    t0 = time.perf_counter()
    last_log = t0
    done = False
    while not done:
        order = torch.randperm(n, device=device)
        for i in range(n // batch_size):
            now = time.perf_counter()
            if steps % 25 == 0:  # keep the launch queue from running far ahead of the GPU
                _sync(device)
                now = time.perf_counter()
            fraction = (now - t0) / budget_s
            if fraction >= 1.0:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = one_cycle(fraction, peak_lr)
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = crop_flip(x_all[idx].float().div_(255.0), pad, data.flip)
            x = ((x - mean) / std).contiguous(memory_format=layout)
            with _autocast(device, cuda):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            seen += len(idx)
            if now - last_log > 20:
                last_log = now
                log(f"teacher: {now - t0:.0f}s, epoch {epochs}, step {steps}, loss {loss.item():.3f}")
        else:
            epochs += 1
    _sync(device)
    wall = time.perf_counter() - t0
    model.eval()
    return {"wall_s": wall, "steps": steps, "images": seen, "epochs": seen / n, "images_per_s": seen / wall,
            "batch_size": batch_size, "peak_lr": peak_lr, "weight_decay": weight_decay,
            "final_loss": loss.item() if loss is not None else None,
            "precision": {"autocast": "bfloat16" if cuda else None, "channels_last": layout == torch.channels_last}}


# ---------------------------------------------------------------------------------------------- 4. DF-MSCD
def run_dfmscd(teacher: nn.Module, card: Any, archs: tuple[str, ...], config: Any, budget_s: float,
               data: Dataset, device: torch.device, teacher_test: float) -> tuple[dict[str, Any], Any]:
    from dfmscd.config import Budget
    from dfmscd.engine import Distiller, StudentSpec

    last = [0.0]

    def progress(event: Any) -> None:
        if event.kind == "sizing":
            log(f"dfmscd: {event.data['message']}; derived {event.data['derived']}")
        if event.kind == "metrics" and time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            d = event.data
            log(f"dfmscd: epoch {event.epoch} {event.progress * 100:.0f}% pool {d.get('pool_size')} "
                f"balance {d.get('pool_balance', 0):.2f} loss {d.get('student_loss')}")

    distiller = Distiller(teacher, card, [StudentSpec(a) for a in archs], config, budget=Budget(seconds=budget_s),
                          callbacks=[progress])
    started = time.perf_counter()
    result = distiller.run(resume=False)
    wall = time.perf_counter() - started
    rep = result.report
    t = rep["timings"]
    total = t["total_s"] or float("nan")
    figures: dict[str, Any] = {
        "budget_s": budget_s, "wall_s": wall, "status": rep["status"], "device": rep["device"],
        "precision": rep["precision"],
        "epochs": rep["epochs_completed"], "warmup_epochs": rep["warmup_epochs"], "kd_steps": rep["kd_steps"],
        "kd_rates": rep["kd_rates"], "generators": rep["num_generators"],
        "synth_batch_size": rep["config"]["synth_batch_size"], "kd_batch_size": rep["config"]["kd_batch_size"],
        "images_synthesized": rep["images_synthesized"],
        "synthesis_images_per_s": rep["synthesis_images_per_s"], "kd_steps_per_s": rep["kd_steps_per_s"],
        "kd_images_per_s": (rep["kd_steps_per_s"] or 0.0) * rep["config"]["kd_batch_size"],
        "timings": t,
        "timing_shares": {k.removesuffix("_s"): t[k] / total for k in
                          ("setup_s", "synthesis_s", "kd_s", "checkpoint_s", "evaluation_s", "other_s")},
        "pool_balance": rep["pool"]["balance"], "label_balance": rep["pool"]["label_balance"],
        "teacher_confidence": rep["pool"]["diversity"]["teacher_confidence"],
        "sizing": {k: (rep.get("sizing") or {}).get(k) for k in ("derived", "message", "notes")},
        "warnings": rep.get("warnings", []),
    }
    return figures, result


def evaluate_students(result: Any, data: Dataset, device: torch.device, teacher_test: float) -> dict[str, Any]:
    out = {}
    for name, module in result.students.items():
        test = accuracy(module, data, "test", device)
        st = result.report["students"][name]
        out[name] = {"architecture": st["architecture"], "params": st["params"], "test_accuracy": test,
                     "ratio_to_teacher": test / teacher_test if teacher_test > 0 else None,
                     "kd_updates": st["kd_updates"], "teacher_agreement": st["teacher_agreement"],
                     "kd_ms_per_step": st["kd_ms_per_step"]}
    return out


# ---------------------------------------------------------------------------------------------- 5. KD FLOPs
def kd_step_flops(teacher: nn.Module, result: Any, input_shape: tuple[int, ...], device: torch.device,
                  peak_tflops: float | None) -> dict[str, Any]:
    rep = result.report
    batch = rep["config"]["kd_batch_size"]
    amp = rep["precision"]["autocast"] is not None
    cl_students = set(rep["precision"]["channels_last_students"])
    t_layout = torch.channels_last if rep["precision"]["channels_last"] else torch.contiguous_format
    rates = rep["kd_rates"]
    teacher_f = train_step_flops(teacher, batch, input_shape, device, amp, t_layout, train=False)
    students = {}
    for name, module in result.students.items():
        layout = torch.channels_last if name in cl_students else torch.contiguous_format
        students[name] = train_step_flops(module, batch, input_shape, device, amp, layout)
    per_step = max(rates.values(), default=1) * teacher_f + sum(rates[n] * f for n, f in students.items())
    steps_per_s = rep["kd_steps_per_s"]
    achieved = per_step * steps_per_s / 1e12 if steps_per_s else None
    return {"method": "torch.utils.flop_counter.FlopCounterMode (matmul/convolution operators, forward and "
                      "backward as dispatched; elementwise work not counted)",
            "kd_batch_size": batch, "kd_rates": rates, "teacher_forward_gflop": teacher_f / 1e9,
            "student_fwd_bwd_gflop": {n: f / 1e9 for n, f in students.items()},
            "gflop_per_kd_step": per_step / 1e9, "kd_steps_per_s": steps_per_s, "achieved_tflops": achieved,
            "share_of_peak": achieved / peak_tflops if achieved and peak_tflops else None}


# ---------------------------------------------------------------------------------------------- summary
def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "–"


def _num(v: Any, fmt: str = ".1f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else "–"


def markdown_summary(r: dict[str, Any]) -> str:
    m, p, d, t, x, k, pub = (r.get(s) or {} for s in SECTIONS)
    lines = [f"# GPU check ({'complete' if r.get('complete') else 'incomplete: ' + str(r.get('stopped', 'stopped'))})",
             "", f"{m.get('gpu') or m.get('device', '?')}, torch {m.get('torch', '?')}, {r.get('created', '')}, "
                 f"{_num(r.get('wall_s'))} s in all.", ""]
    lines += ["| figure | value |", "|---|---:|",
              f"| {p.get('dtype', '?')} matmul peak (n={p.get('peak_size', '?')}) | {_num(p.get('peak_tflops'), '.3g')} TFLOP/s |",
              f"| data decode + load | {_num(d.get('load_s'))} s ({d.get('train', '?')} train / {d.get('test', '?')} test) |",
              f"| teacher {t.get('architecture', '?')} test accuracy | {_pct(t.get('test_accuracy'))} |",
              f"| teacher training wall time | {_num(t.get('wall_s'))} s, {_num(t.get('epochs'))} epochs, "
              f"{_num(t.get('images_per_s'), '.0f')} images/s, {_num(t.get('achieved_tflops'), '.3g')} TFLOP/s |",
              f"| DF-MSCD budget / wall | {_num(x.get('budget_s'), '.0f')} s / {_num(x.get('wall_s'))} s |",
              f"| synthesis images/s | {_num(x.get('synthesis_images_per_s'), '.0f')} |",
              f"| KD steps/s (batch {x.get('kd_batch_size', '?')}) | {_num(x.get('kd_steps_per_s'), '.2f')} |",
              f"| KD step achieved TFLOP/s (share of peak) | {_num(k.get('achieved_tflops'), '.3g')} "
              f"({_pct(k.get('share_of_peak'))}) |",
              f"| pool balance | {_num(x.get('pool_balance'), '.2f')} |"]
    shares = x.get("timing_shares") or {}
    if shares:
        lines.append("| timing split | " + ", ".join(f"{n} {_pct(v)}" for n, v in shares.items()) + " |")
    studs = x.get("students") or {}
    if studs:
        lines += ["", "| student | test accuracy | ratio to teacher | KD updates |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {_pct(s.get('test_accuracy'))} | {_num(s.get('ratio_to_teacher'), '.3f')} | "
                  f"{s.get('kd_updates', '–')} |" for n, s in studs.items()]
    if pub:
        lines += ["", f"Published: {pub.get('source')}: {_pct(pub.get('test_accuracy'))} after "
                      f"{pub.get('synthesis_gpu_hours')} GPU-hours of synthesis alone; here resnet18 "
                      f"{_pct(pub.get('ours_resnet18_test_accuracy'))}. {pub.get('caveat', '')}"]
    if r.get("errors"):
        lines += ["", "Errors: " + "; ".join(f"{s}: {e}" for s, e in r["errors"].items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="folder holding cifar10-jpeg.tar.gz (default ../shared/data)")
    p.add_argument("--out-dir", type=Path, help="where gpu_check.json/.md go (default $OUT, else benchmarks/results)")
    p.add_argument("--budget", type=float, help="DF-MSCD wall budget in seconds (default 150; --tiny 12)")
    p.add_argument("--teacher-budget", type=float, help="teacher training wall budget in seconds (default 120; --tiny 5)")
    p.add_argument("--wall", type=float, help="the whole script's planned wall time; the DF-MSCD budget shrinks to "
                                              "fit it (default 390; --tiny 90)")
    p.add_argument("--device", default=None, help="default: cuda (--tiny: cpu)")
    p.add_argument("--preset", default="balanced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="every step on the CPU in about a minute (tests)")
    args = p.parse_args(argv)
    args.budget = args.budget if args.budget is not None else (12.0 if args.tiny else 150.0)
    args.teacher_budget = args.teacher_budget if args.teacher_budget is not None else (5.0 if args.tiny else 120.0)
    args.wall = args.wall if args.wall is not None else (90.0 if args.tiny else 390.0)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.out_dir is None:
        args.out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS_DIR
    return args


def _stage(results: Results, name: str, fn: Callable[[], Any]) -> Any:
    """Run one step; an exception is recorded under ``errors`` and the run goes on where it can."""
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one broken step must not lose the others' figures
        traceback.print_exc()
        results.data["errors"][name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        results.save()
        log(f"{name}: FAILED ({results.data['errors'][name]})")
        return None


def run_check(args: argparse.Namespace, results: Results) -> None:
    from dfmscd.config import DistillConfig, resolve_config
    from dfmscd.io import parse_card
    from dfmscd.models import create_model

    plan = TINY if args.tiny else FULL
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --tiny for the CPU rehearsal)")
    machine = machine_info(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                       cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        torch.backends.cudnn.benchmark = True
    machine["tiny"] = args.tiny
    results.put("machine", machine)
    log(f"machine: {machine.get('gpu') or machine['cpu']}, torch {machine['torch']}")

    # 1. matmul peak
    peak = _stage(results, "matmul_peak",
                  lambda: matmul_peak(device, plan.matmul_sizes, plan.matmul_rounds, plan.matmul_per_round))
    peak_tflops = peak["peak_tflops"] if peak else None
    if peak:
        results.put("matmul_peak", peak)
        log(f"{peak['dtype']} matmul peak: {peak_tflops:.3g} TFLOP/s (n={peak['peak_size']})")

    # 2. data
    def load() -> Dataset:
        t0 = time.perf_counter()
        full = load_dataset("cifar10", args.data_dir, seed=0, log=log)
        data = _subset(full, plan.train_subset, plan.eval_subset, args.seed)
        results.put("data", {"dataset": "cifar10 (JPEG re-encoding, ../shared/data/cifar10-jpeg.tar.gz)",
                             "sha256": full.sha256, "load_s": time.perf_counter() - t0, "train": len(data.y_train),
                             "val": len(data.y_val), "test": len(data.y_test), "input_shape": list(data.input_shape),
                             "mean": list(data.mean), "std": list(data.std)})
        log(f"data: {len(data.y_train)} train / {len(data.y_test)} test in {time.perf_counter() - t0:.1f}s")
        return data

    data = _stage(results, "data", load)
    if data is None:
        return

    # 3. teacher
    def teacher_step() -> tuple[nn.Module, float]:
        c, h, _ = data.input_shape
        torch.manual_seed(args.seed)
        model = create_model(plan.teacher, data.num_classes, in_channels=c, image_size=h)
        log(f"teacher: training {plan.teacher} for {args.teacher_budget:.0f}s on {device}")
        cuda = device.type == "cuda"
        layout = torch.channels_last if (cuda or c == 3) else torch.contiguous_format
        step_flops = train_step_flops(model, plan.teacher_batch, data.input_shape, device, cuda, layout)
        stats = train_teacher(model, data, device, args.teacher_budget, plan.teacher_batch, plan.teacher_lr, args.seed)
        test = accuracy(model, data, "test", device)
        val = accuracy(model, data, "val", device)
        tflops = step_flops * stats["steps"] / stats["wall_s"] / 1e12
        results.put("teacher", {"architecture": plan.teacher, "budget_s": args.teacher_budget, **stats,
                                "test_accuracy": test, "val_accuracy": val,
                                "gflop_per_step": step_flops / 1e9, "achieved_tflops": tflops,
                                "share_of_peak": tflops / peak_tflops if peak_tflops else None,
                                "flops_method": "torch.utils.flop_counter.FlopCounterMode, one forward+backward"})
        log(f"teacher: test {test:.4f} (val {val:.4f}) after {stats['wall_s']:.1f}s, {stats['epochs']:.1f} epochs, "
            f"{stats['images_per_s']:.0f} images/s, {tflops:.3g} TFLOP/s")
        return model.to(memory_format=torch.contiguous_format).eval(), test

    got = _stage(results, "teacher", teacher_step)
    if got is None:
        return
    teacher, teacher_test = got

    # 4. DF-MSCD, its budget shrunk if the steps before took longer than planned
    elapsed = time.perf_counter() - results.started
    reserve = 15.0 if args.tiny else 40.0  # the students' evaluation, the FLOP count, the engine's own overrun
    budget = max(5.0 if args.tiny else 30.0, min(args.budget, args.wall - elapsed - reserve))
    if budget < args.budget:
        log(f"dfmscd: budget {args.budget:.0f}s -> {budget:.0f}s to fit --wall {args.wall:.0f}s")

    def distill() -> Any:
        card = parse_card(data.card_dict(plan.teacher))
        known = {k: v for k, v in plan.overrides if k in DistillConfig.model_fields}  # fields of this version
        config = resolve_config(args.preset, {"device": args.device, "seed": args.seed, **known})
        log(f"dfmscd: {', '.join(plan.students)} for {budget:.0f}s ({args.preset})")
        figures, result = run_dfmscd(teacher, card, plan.students, config, budget, data, device, teacher_test)
        results.put("dfmscd", {"students_asked": list(plan.students), "budget_asked_s": args.budget, **figures})
        log(f"dfmscd: {figures['wall_s']:.1f}s, {figures['epochs']} epochs, synthesis "
            f"{_num(figures['synthesis_images_per_s'], '.0f')} images/s, KD {_num(figures['kd_steps_per_s'], '.2f')} "
            f"steps/s, pool balance {figures['pool_balance']:.2f}, split "
            + ", ".join(f"{n} {v:.0%}" for n, v in figures["timing_shares"].items()))
        students = evaluate_students(result, data, device, teacher_test)
        results.put("dfmscd", {"students": students})
        log("dfmscd: test " + ", ".join(f"{n} {s['test_accuracy']:.4f} ({_num(s['ratio_to_teacher'], '.3f')} of the teacher)"
                                        for n, s in students.items()))
        return result

    result = _stage(results, "dfmscd", distill)

    # 5. KD step FLOPs against the peak
    if result is not None:
        def flops() -> None:
            k = kd_step_flops(teacher, result, data.input_shape, device, peak_tflops)
            results.put("kd_flops", k)
            log(f"KD step: {k['gflop_per_kd_step']:.3g} GFLOP, {_num(k['achieved_tflops'], '.3g')} TFLOP/s, "
                f"{_pct(k['share_of_peak'])} of the matmul peak")

        _stage(results, "kd_flops", flops)

    # 6. beside the published figure
    students = (results.data.get("dfmscd") or {}).get("students") or {}
    ours = students.get("resnet18", {}).get("test_accuracy")
    results.put("published", {
        **FAST_DFKD, "ours_resnet18_test_accuracy": ours,
        "ours_test_accuracy": {n: s["test_accuracy"] for n, s in students.items()},
        "ours_teacher_test_accuracy": teacher_test,
        "ours_budget_s": (results.data.get("dfmscd") or {}).get("budget_s"),
        "caveat": (f"Not a like-for-like comparison: our DF-MSCD budget is {budget:.0f} s of wall time "
                   "(synthesis and KD together) against 0.28 GPU-hours of synthesis alone, the data is a JPEG "
                   f"re-encoding of CIFAR-10, and the teacher was trained for {args.teacher_budget:.0f} s "
                   f"({_pct(teacher_test)} test)" + (" (--tiny: a resnet8 teacher, resnet8/wrn_16_1 students, "
                                                     "data subsets, on a CPU)" if args.tiny else "") + "."),
    })
    log(f"published: Fast-DFKD resnet34 -> resnet18 {_pct(FAST_DFKD['test_accuracy'])} after 0.28 GPU-h of synthesis; "
        "ours: " + ", ".join(f"{n} {_pct(s['test_accuracy'])}" for n, s in students.items())
        + f" after {budget:.0f}s with a {args.teacher_budget:.0f}s teacher ({_pct(teacher_test)})")


def main(argv: list[str] | None = None) -> int:
    from dfmscd.report import write_text_atomic

    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = Results(args.out_dir, args)
    results.save()
    code = 0
    try:
        run_check(args, results)
        results.data["complete"] = not results.data["errors"]
        code = 0 if results.data["complete"] else 1
    except KeyboardInterrupt:
        results.data["stopped"] = "interrupted (timeout or Ctrl-C)"
        log("interrupted: writing what there is")
        code = 130
    finally:
        results.save()
        summary = markdown_summary(results.data)
        write_text_atomic(args.out_dir / MD_NAME, summary)
        print(summary, flush=True)
        log(f"wrote {args.out_dir / JSON_NAME} and {args.out_dir / MD_NAME}")
    return code


if __name__ == "__main__":
    sys.exit(main())
