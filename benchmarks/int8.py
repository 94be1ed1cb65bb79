"""INT8 students on this CPU: test accuracy of fp32 and INT8 (calibrated on the run's synthetic
sample, and for comparison on real training images), the drop, latency and file sizes.

    # students saved by a benchmarks/compare.py run, with the run's calibration sample (.npz, uint8
    # N x C x H x W under "x" or "calibration"; DistillResult.calibration)
    OMP_NUM_THREADS=1 uv run python benchmarks/int8.py --dataset mnist --calibration RUN/calibration.npz \\
        RUN/resnet8.safetensors RUN/wrn_16_1.safetensors
    uv run python benchmarks/int8.py --tiny        # self-check on a toy task: no dataset, seconds
    # which quantization types keep accuracy on this CPU (real calibration images only, no run needed)
    OMP_NUM_THREADS=1 uv run python benchmarks/int8.py --dataset mnist --compare-types --latency-repeats 0 \
        --tag _types_teacher benchmarks/teachers/mnist_lenet5_*.safetensors

For each student file (written by dfmscd, card inside):
- fp32: the PyTorch student's test accuracy (and the float ONNX file's, in ONNX Runtime);
- INT8 calibrated on the synthetic sample (what a job delivers) and INT8 calibrated on the same
  number of real training images (``benchmarks.data.load_dataset(name).x_train``, a fixed random
  draw): test accuracy, drop from fp32, top-1 agreement with fp32 on the test images, and the
  file's verification figures (on the first ``--verify-images`` test images);
- latency at batch 1 and 64 (median of ``--latency-repeats``; ONNX Runtime for onnx / INT8, torch
  for the safetensors student), with ``--threads`` threads; file sizes.
Test images are used for the figures only, never for calibration. Results:
``benchmarks/results/int8_<dataset>_cpu_<cpu><tag>.{json,md}``, named by what they measure and the CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``dfmscd`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.machine import cpu_model
from dfmscd.deploy import export_verified
from dfmscd.io import ModelCard, load_model
from dfmscd.io.quantize import Int8Settings, images_array
from dfmscd.io.verify import file_logits, student_logits
from dfmscd.report import write_json_atomic
from dfmscd.student_report import LatencySettings, count_macs, cpu_info, measure_latency

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATASET_CHOICES = ("mnist", "cifar10", "tiny_imagenet32")
# --compare-types: the quantization types ONNX Runtime offers for x86 CPUs, against dfmscd's choice
TYPE_VARIANTS = {
    "u8s8_7bit": Int8Settings(),  # dfmscd's: u8 activations, s8 per-channel 7-bit weights (reduce_range)
    "u8s8_8bit": Int8Settings(reduce_range=False),
    "s8s8": Int8Settings(activation_type="QInt8", reduce_range=False),
    "u8u8": Int8Settings(weight_type="QUInt8", reduce_range=False),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_slug(model: str | None = None) -> str:
    """A short name for result files: xeon, epyc, ryzen, core, ... (else the first word)."""
    text = (model or cpu_model()).lower()
    for family in ("xeon", "epyc", "ryzen", "threadripper", "core", "graviton", "neoverse", "apple"):
        if family in text:
            return family
    words = re.findall(r"[a-z0-9]+", text.replace("(r)", "").replace("(tm)", ""))
    return words[0] if words else "unknown"


def as_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 N x C x H x W pixels from uint8 or [0, 1] float storage."""
    array = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.dtype == np.uint8:
        return array
    return np.clip(np.round(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def read_calibration(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        key = next((k for k in ("calibration", "x") if k in data.files), None)
        if key is None:
            raise SystemExit(f"{path}: needs an array 'calibration' or 'x' (uint8 N x C x H x W), found {data.files}")
        return as_uint8(data[key])


def real_sample(x_train: torch.Tensor | np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` training images drawn without replacement with a fixed seed (the same for every student)."""
    pixels = as_uint8(x_train)
    idx = np.sort(np.random.default_rng(seed).choice(len(pixels), size=min(n, len(pixels)), replace=False))
    return pixels[idx]


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())


def measure_student(label: str, module: torch.nn.Module, card: ModelCard, x_test: np.ndarray, y_test: np.ndarray,
                    synthetic: np.ndarray | None, real: np.ndarray | None, folder: Path, args: argparse.Namespace,
                    settings: Int8Settings) -> dict[str, Any]:
    """Every figure of one student (see the module doc); files are written into ``folder``."""
    x = images_array(x_test, card, "test images")
    verify_on = x_test[:args.verify_images]
    fp32 = student_logits(module, x)
    files = {"safetensors": export_verified("safetensors", module, card, folder / f"{label}.safetensors", holdout=verify_on),
             "onnx": export_verified("onnx", module, card, folder / f"{label}.onnx", holdout=verify_on)}
    out: dict[str, Any] = {"student": label, "architecture": card.architecture,
                           "parameters": int(sum(p.numel() for p in module.parameters())),
                           "macs": count_macs(module, card.input_shape), "fp32_test_accuracy": _accuracy(fp32, y_test),
                           "onnx_fp32_test_accuracy": _accuracy(file_logits("onnx", files["onnx"].path, x), y_test)}
    for name, calibration in (("int8_synthetic", synthetic), ("int8_real", real)):  # None: not asked for
        if calibration is None:
            continue
        log(f"{label}: INT8 calibrated on {len(calibration)} {name.split('_')[1]} images")
        exported = export_verified("onnx-int8", module, card, folder / f"{label}.{name}.int8.onnx",
                                   calibration=calibration, holdout=verify_on, int8=settings)
        logits = file_logits("onnx-int8", exported.path, x)
        out[name] = {"calibration_images": int(len(calibration)), "test_accuracy": _accuracy(logits, y_test),
                     "drop": out["fp32_test_accuracy"] - _accuracy(logits, y_test),
                     "agreement_with_fp32": float((logits.argmax(1) == fp32.argmax(1)).mean()),
                     "verification": exported.verification.to_dict(), "size_bytes": exported.size_bytes}
        files[name] = exported
    if args.compare_types:
        calibration = synthetic if synthetic is not None else real
        source = "synthetic" if synthetic is not None else "real"
        out["types"] = {"calibration": source}
        for variant, variant_settings in TYPE_VARIANTS.items():
            exported = export_verified("onnx-int8", module, card, folder / f"{label}.{variant}.int8.onnx",
                                       calibration=calibration, holdout=verify_on, int8=variant_settings)
            logits = file_logits("onnx-int8", exported.path, x)
            out["types"][variant] = {"test_accuracy": _accuracy(logits, y_test),
                                     "agreement_with_fp32": float((logits.argmax(1) == fp32.argmax(1)).mean()),
                                     "max_abs_logit_diff": float(np.abs(logits - fp32).max())}
    out["size_bytes"] = {fmt: f.size_bytes for fmt, f in files.items()}
    if args.latency_repeats > 0:
        latency = LatencySettings(batch_sizes=(1, 64), repeats=args.latency_repeats, warmup=2, threads=args.threads)
        int8_file = files.get("int8_synthetic") or files.get("int8_real")  # the same graph, other scales
        timed = {"safetensors": files["safetensors"], "onnx": files["onnx"], **({"onnx-int8": int8_file} if int8_file else {})}
        out["latency_ms"] = {fmt: measure_latency(fmt, f.path, card, latency) for fmt, f in timed.items()}
    return out


def markdown(results: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v * 100:.2f}"

    def lat(r: dict[str, Any], fmt: str, b: str) -> str:
        entry = (r.get("latency_ms") or {}).get(fmt, {}).get(b)
        return "–" if entry is None else f"{entry['median_ms']:.3f}"

    m = results["machine"]
    lines = [f"# INT8 students: {results['dataset']}", "",
             f"CPU {m['cpu']['model']} ({', '.join(k for k, v in m['cpu']['isa'].items() if v) or 'no AVX2'}), "
             f"{m['threads']} thread(s), onnxruntime {m['onnxruntime']}, torch {m['torch']}; {results['created']}.",
             f"INT8: {results['int8_settings']['activation_type']} activations, {results['int8_settings']['weight_type']} "
             f"weights per channel{', 7-bit (reduce_range)' if results['int8_settings']['reduce_range'] else ''}, "
             f"{results['int8_settings']['calibrate_method']} calibration, QDQ. Test images: {results['test_images']}.", "",
             "| student | fp32 test % | INT8 synthetic-calib % | drop (pt) | INT8 real-calib % | drop (pt) | "
             "size fp32 / INT8 (KiB) | ms b1 torch / onnx / INT8 | ms b64 torch / onnx / INT8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["models"]:
        syn, real = r.get("int8_synthetic", {}), r.get("int8_real", {})
        sizes = r["size_bytes"]
        lines.append(
            f"| {r['student']} | {pct(r['fp32_test_accuracy'])} | {pct(syn.get('test_accuracy'))} | "
            f"{pct(syn.get('drop'))} | {pct(real.get('test_accuracy'))} | {pct(real.get('drop'))} | "
            f"{sizes['onnx'] / 1024:.0f} / {sizes.get('int8_synthetic', sizes.get('int8_real', 0)) / 1024:.0f} | "
            f"{lat(r, 'safetensors', '1')} / {lat(r, 'onnx', '1')} / {lat(r, 'onnx-int8', '1')} | "
            f"{lat(r, 'safetensors', '64')} / {lat(r, 'onnx', '64')} / {lat(r, 'onnx-int8', '64')} |")
    typed = [r for r in results["models"] if r.get("types")]
    if typed:
        names = list(TYPE_VARIANTS)
        lines += ["", f"Quantization types (calibrated on the {typed[0]['types']['calibration']} images): test % / "
                  "top-1 agreement with fp32 %", "", "| student | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for r in typed:
            cells = [f"{pct(r['types'][n]['test_accuracy'])} / {pct(r['types'][n]['agreement_with_fp32'])}" for n in names]
            lines.append(f"| {r['student']} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def _tiny_inputs() -> tuple[list[tuple[str, torch.nn.Module, ModelCard]], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A toy task (four 1x8x8 prototypes plus noise) and a resnet8 trained on it for a few steps."""
    import torch.nn.functional as F

    from dfmscd.models import create_model

    g = torch.Generator().manual_seed(1234)
    prototypes = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()

    def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n,), generator=gen)
        x = (prototypes[y] + 0.25 * torch.randn(n, 1, 8, 8, generator=gen)).clamp(0, 1)
        return as_uint8(x), y.numpy()

    card = ModelCard(architecture="resnet8", num_classes=4, input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,))
    torch.manual_seed(0)
    model = create_model("resnet8", 4, in_channels=1, image_size=8)
    model.train()
    for step in range(15):
        xb, yb = sample(64, 100 + step)
        model.zero_grad()
        F.cross_entropy(model(torch.from_numpy(images_array(xb, card))), torch.from_numpy(yb)).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    model.eval()
    x_test, y_test = sample(256, 1)
    synthetic, _ = sample(128, 2)
    real, _ = sample(128, 3)
    return [("resnet8", model, card)], x_test, y_test, synthetic, real


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    settings = Int8Settings()
    if args.tiny:
        students, x_test, y_test, synthetic, real = _tiny_inputs()
        dataset = "tiny"
    else:
        from benchmarks.data import load_dataset

        if not args.models:
            raise SystemExit("give student files (or --tiny)")
        data = load_dataset(args.dataset, log=log)
        x_test, y_test = as_uint8(data.x_test), data.y_test.numpy()
        synthetic = read_calibration(args.calibration) if args.calibration is not None else None
        default_n = len(synthetic) if synthetic is not None else 1024
        real = None if args.real_images == 0 else real_sample(data.x_train, args.real_images or default_n, args.real_seed)
        if synthetic is None and real is None:
            raise SystemExit("nothing to calibrate on: give --calibration or real images (--real-images N)")
        students = []
        for path in args.models:
            module, card = load_model(path)
            if tuple(card.input_shape) != tuple(x_test.shape[1:]):
                raise SystemExit(f"{path}: card input shape {card.input_shape} is not {args.dataset}'s {x_test.shape[1:]}")
            students.append((Path(path).name.split(".")[0], module, card))
        dataset = args.dataset
    if args.test_limit:
        x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit]
    threads = args.threads or torch.get_num_threads()
    results: dict[str, Any] = {
        "benchmark": "int8", "dataset": dataset, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"cpu": cpu_info(), "threads": threads, "onnxruntime": onnxruntime.__version__,
                    "torch": torch.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "int8_settings": settings.to_dict(), "test_images": int(len(y_test)),
        "type_variants": {k: v.to_dict() for k, v in TYPE_VARIANTS.items()} if args.compare_types else None,
        "calibration": {"synthetic": None if synthetic is None else {"file": str(args.calibration), "images": int(len(synthetic))},
                        "real": None if real is None else {"images": int(len(real)), "seed": args.real_seed}},
        "models": [],
    }
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="dfmscd-int8-bench-") as tmp:
            for label, module, card in students:
                log(f"{label}: fp32, ONNX, INT8 ({len(y_test)} test images)")
                results["models"].append(measure_student(label, module, card, x_test, y_test, synthetic, real,
                                                         Path(tmp), args, settings))
    finally:
        torch.set_num_threads(before)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", type=Path, help="student .safetensors files written by dfmscd")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default="mnist")
    p.add_argument("--calibration", type=Path, help="the run's calibration sample (.npz, 'calibration' or 'x')")
    p.add_argument("--real-images", type=int, default=None,
                   help="real training images to calibrate on for comparison (default: as many as the synthetic sample; 0: skip)")
    p.add_argument("--real-seed", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test images only (0: all)")
    p.add_argument("--verify-images", type=int, default=1024, help="test images each file is verified on")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed runs per batch size (0: no latency)")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and ONNX Runtime (default: torch's)")
    p.add_argument("--compare-types", action="store_true",
                   help="also quantize with u8s8 8-bit, s8s8 and u8u8 (ONNX Runtime's x86 options) and compare")
    p.add_argument("--tiny", action="store_true", help="self-check on a toy task (no dataset), results not saved unless --out-dir")
    p.add_argument("--out-dir", type=Path, default=None, help=f"where results go (default {RESULTS_DIR}; --tiny: nowhere)")
    p.add_argument("--tag", default="", help="appended to the result name, e.g. _seed0")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    table = markdown(results)
    print(table)
    out_dir = args.out_dir or (None if args.tiny else RESULTS_DIR)
    if out_dir is not None:
        stem = out_dir / f"int8_{results['dataset']}_cpu_{cpu_slug(results['machine']['cpu']['model'])}{args.tag}"
        write_json_atomic(stem.with_suffix(".json"), results)
        stem.with_suffix(".md").write_text(table)
        log(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
