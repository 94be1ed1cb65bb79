"""The student report: what to choose a student by, per student and per file format.

Parameters, multiply-adds at the card's input shape (batch 1), each file's size, its CPU latency
at batch 1 and 64 (median of a few timed runs; ONNX Runtime for onnx / onnx-int8, torch for
safetensors / torchscript), the CPU it was measured on (model, AVX2 / AVX-512 / VNNI / AMX) and
the thread count, agreement with the teacher on the held-out images, and each file's
verification figures. Everything is JSON-able (``write_json_atomic``).

Latency is measured, so it costs time: ``LatencySettings`` says how much (``None`` skips it).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dfmscd.deploy import ExportedFile
from dfmscd.io.card import ModelCard
from dfmscd.io.quantize import images_array
from dfmscd.io.verify import FLOAT_MIN_AGREEMENT, INT8_MIN_AGREEMENT, file_logits, student_logits, verification_images

_ISA_FLAGS = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni", "avx_vnni_int8"),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
}


@dataclass(frozen=True)
class LatencySettings:
    batch_sizes: tuple[int, ...] = (1, 64)
    repeats: int = 5  # timed runs per batch size; the median is reported
    warmup: int = 1  # untimed runs first (session start-up, allocations)
    threads: int | None = None  # None: torch.get_num_threads() (OMP_NUM_THREADS), for torch and ONNX Runtime alike

    def resolved_threads(self) -> int:
        return int(self.threads) if self.threads else torch.get_num_threads()


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU model, its logical CPU count and the instruction sets that decide FP32 and INT8 speed."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model: str | None = None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    model = model or platform.processor() or "unknown"
    isa = {name: any(f in flags for f in names) for name, names in _ISA_FLAGS.items()}
    shown = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    return {"model": model, "logical_cpus": os.cpu_count(), "machine": platform.machine(), "isa": isa, "flags": shown}


@torch.no_grad()
def count_macs(module: nn.Module, input_shape: tuple[int, ...] | list[int]) -> int:
    """Multiply-adds of the convolutions and linear layers for one image of ``input_shape`` (C, H, W),
    counted with forward hooks (other layers, e.g. BatchNorm, activations, pooling, are not counted)."""
    model = copy.deepcopy(module).to("cpu").float().eval()
    total = [0]

    def conv(m: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        kernel = int(np.prod(m.weight.shape[2:]))
        total[0] += int(output.numel()) * (m.in_channels // m.groups) * kernel

    def linear(m: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        total[0] += int(output.numel()) * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _median_ms(run: Any, settings: LatencySettings) -> dict[str, Any]:
    for _ in range(settings.warmup):
        run()
    times = []
    for _ in range(max(1, settings.repeats)):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4), "runs": len(times)}


def measure_latency(fmt: str, path: str | os.PathLike[str], card: ModelCard,
                    settings: LatencySettings = LatencySettings()) -> dict[str, Any]:
    """Median CPU latency of one file per batch size: ``{"1": {"median_ms", "min_ms", "runs",
    "images_per_s"}, "64": ...}``. Inputs are random pixels from a fixed seed (speed does not depend
    on them)."""
    threads = settings.resolved_threads()
    rng = np.random.default_rng(0)
    largest = max(settings.batch_sizes)
    x_all = images_array(rng.integers(0, 256, size=(largest, *card.input_shape), dtype=np.uint8), card)
    out: dict[str, Any] = {}
    if fmt in ("onnx", "onnx-int8"):
        from dfmscd.io.onnx_files import ort_session

        session = ort_session(path, threads)
        name = session.get_inputs()[0].name
        for b in settings.batch_sizes:
            x = np.ascontiguousarray(x_all[:b])
            out[str(b)] = _median_ms(lambda: session.run(None, {name: x}), settings)
    else:
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notice
                model = torch.jit.load(str(path), map_location="cpu")  # our own export
        else:
            from dfmscd.io.model_file import load_model

            model, _ = load_model(path)
        model.eval()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                for b in settings.batch_sizes:
                    x = torch.from_numpy(np.ascontiguousarray(x_all[:b]))
                    out[str(b)] = _median_ms(lambda: model(x), settings)
        finally:
            torch.set_num_threads(before)
    for b, entry in out.items():
        entry["images_per_s"] = round(int(b) * 1000.0 / entry["median_ms"], 1) if entry["median_ms"] > 0 else None
    return out


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


def student_report(name: str, module: nn.Module, card: ModelCard, files: Mapping[str, ExportedFile], *,
                   teacher: nn.Module | None = None, holdout: Any = None, calibration: Any = None,
                   latency: LatencySettings | None = LatencySettings(), teacher_logits: np.ndarray | None = None,
                   cpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """One student's report (JSON-able). ``files``: its verified files by format
    (``dfmscd.deploy.export_student``). ``teacher`` (or its precomputed ``teacher_logits`` on the
    same images) gives the agreement with the teacher of the PyTorch student and of every file, on
    ``holdout`` (the calibration images, then random pixels, when a run left none)."""
    from dfmscd.models import count_parameters

    images, source = verification_images(holdout, calibration, card)
    x = images_array(images, card, "held-out images")
    if teacher_logits is None and teacher is not None:
        teacher_logits = student_logits(teacher, x)
    macs = count_macs(module, card.input_shape)
    threads = latency.resolved_threads() if latency is not None else torch.get_num_threads()
    formats: dict[str, Any] = {}
    agreement: dict[str, float | None] = {"pytorch": None}
    if teacher_logits is not None:
        agreement["pytorch"] = _agreement(student_logits(module, x), teacher_logits)
    for fmt, exported in files.items():
        entry: dict[str, Any] = {"file": exported.path.name, "size_bytes": exported.size_bytes, "sha256": exported.sha256,
                                 "verification": exported.verification.to_dict()}
        if teacher_logits is not None:
            agreement[fmt] = _agreement(file_logits(fmt, exported.path, x), teacher_logits)
            entry["teacher_agreement"] = agreement[fmt]
        if latency is not None:
            entry["latency_ms"] = measure_latency(fmt, exported.path, card, latency)
        formats[fmt] = entry
    return {
        "student": name,
        "architecture": card.architecture,
        "input_shape": list(card.input_shape),
        "num_classes": card.num_classes,
        "parameters": count_parameters(module),
        "macs": macs,
        "flops": 2 * macs,
        "flops_counted": "convolutions and linear layers at batch 1; flops = 2 x multiply-adds",
        "held_out_images": int(x.shape[0]),
        "images_source": source,
        "teacher_agreement": agreement if teacher_logits is not None else None,
        "formats": formats,
        "flagged": sorted(fmt for fmt, f in files.items() if f.flagged),
        "latency": {**asdict(latency), "threads": threads} if latency is not None else None,
        "cpu": cpu if cpu is not None else cpu_info(),
    }


def run_student_report(students: Mapping[str, tuple[nn.Module, ModelCard]], files: Mapping[str, Mapping[str, ExportedFile]],
                       *, teacher: nn.Module | None = None, holdout: Any = None, calibration: Any = None,
                       latency: LatencySettings | None = LatencySettings()) -> dict[str, Any]:
    """The report of a run's students: ``{"cpu", "thresholds", "students": {name: student_report}}``;
    the teacher runs once on the held-out images for all of them."""
    cpu = cpu_info()
    reports: dict[str, Any] = {}
    teacher_logits = None
    for name, (module, card) in students.items():
        if teacher is not None and teacher_logits is None:
            images, _ = verification_images(holdout, calibration, card)
            teacher_logits = student_logits(teacher, images_array(images, card, "held-out images"))
        reports[name] = student_report(name, module, card, files.get(name, {}), holdout=holdout, calibration=calibration,
                                       latency=latency, teacher_logits=teacher_logits, cpu=cpu)
    return {"cpu": cpu, "thresholds": {"float_min_agreement": FLOAT_MIN_AGREEMENT, "int8_min_agreement": INT8_MIN_AGREEMENT},
            "students": reports}


__all__ = ["LatencySettings", "count_macs", "cpu_info", "measure_latency", "run_student_report",
           "student_report"]
