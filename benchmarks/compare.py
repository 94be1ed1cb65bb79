"""DF-MSCD vs the single-student Fast-DFKD baseline vs KD on real data, on real images.

    uv run python benchmarks/compare.py                 # digits, 300 s DF-MSCD budget
    uv run python benchmarks/compare.py --quick         # 45 s budget, 15 KD-on-real epochs; labelled "quick"
    OMP_NUM_THREADS=1 uv run python benchmarks/compare.py --dataset cifar10 --matrix --clock cpu --budget 1200 --seeds 0

What is compared (see benchmarks/README.md for the reasoning):
(a) DF-MSCD: one run distilling all students together, with a wall-clock budget.
(b) Baseline: ``DistillConfig.single_student_baseline()`` (one generator, i.i.d. labels, no
    peer/inter-student terms), one run per student. "Same per-student budget" = each baseline
    run gets as many epochs (and warm-up epochs) as DF-MSCD completed, so every student sees
    the same number of synthesis rounds for its generator and (up to DF-MSCD's last, clock-cut
    epoch) the same number of KD updates; wall time is then *measured*, which is what makes
    "less total wall time than the three baselines" a finding rather than a consequence of how
    budgets were set. ``--baseline-match seconds`` instead gives each baseline run the whole
    DF-MSCD wall budget.
(c) KD on the real training images (same KL objective and temperature): the ceiling.
Accuracies are on the test split, which is used for nothing else; the validation split is
reported alongside for any tuning.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``dfmscd`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.data import DATASETS, Dataset, DatasetUnavailable, load_dataset
from benchmarks.machine import machine_info
from benchmarks.tables import markdown_report, target_checks
from benchmarks.teacher import RECIPES, TeacherMissing, get_teacher
from benchmarks.train import accuracy, pick_device, train_kd_real

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Per dataset: three heterogeneous students, one of them the costliest per step (depthwise
# mobilenetv2 on digits; shufflenetv2 on CIFAR-10, where mobilenetv2's 2.8 s per KD step belongs to
# the GPU), and epochs of KD on real images for the legacy single run. Teachers: benchmarks/teacher.py.
DEFAULTS = {
    "digits": dict(students="resnet8,vgg8,mobilenetv2", kd_epochs=60),
    "digits24": dict(students="resnet8,vgg8,mobilenetv2", kd_epochs=60),
    "mnist": dict(students="lenet5_half,resnet8,wrn_16_1", kd_epochs=5),
    "cifar10": dict(students="resnet8,wrn_16_1,shufflenetv2", kd_epochs=20),
    "tiny_imagenet32": dict(students="resnet8,wrn_16_1,shufflenetv2", kd_epochs=5),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _student_figures(students: dict[str, torch.nn.Module], data: Dataset, device: torch.device,
                     teacher_test: float) -> dict[str, dict[str, float]]:
    out = {}
    for name, module in students.items():
        test = accuracy(module, data, "test", device)
        out[name] = {"val_accuracy": accuracy(module, data, "val", device), "test_accuracy": test,
                     "ratio_to_teacher": test / teacher_test if teacher_test > 0 else None}
    return out


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
BUDGET_CLOCK = ["wall"]  # set by --clock


KEEP_DIR: list[Path | None] = [None]  # set by --keep-students


def _keep(result: Any, label: str) -> None:
    """The run's students (model files) and its calibration sample (.npz, uint8 N×C×H×W), for the INT8 benchmark."""
    import numpy as np

    from dfmscd.io import save_model

    folder = KEEP_DIR[0]
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    stem = label.replace(" ", "_")
    for name, module in result.students.items():
        save_model(module, result.cards[name], folder / f"{stem}_{name}.safetensors")
    np.savez(folder / f"{stem}_calibration.npz", calibration=result.calibration.numpy())


def _distill(teacher: torch.nn.Module, card: Any, archs: list[str], config: Any, budget: Any,
             data: Dataset, device: torch.device, teacher_test: float, label: str) -> dict[str, Any]:
    """One Distiller run; figures from its report plus our own test-split evaluation."""
    from dfmscd.engine import Distiller, StudentSpec

    last = [0.0]

    def progress(event: Any) -> None:
        if event.kind == "sizing":
            log(f"{label}: {event.data['message']}; derived {event.data['derived']}")
        if event.kind == "metrics" and time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            d = event.data
            log(f"{label}: epoch {event.epoch} {event.progress * 100:.0f}% pool {d.get('pool_size')} "
                f"balance {d.get('pool_balance', 0):.2f} loss {d.get('student_loss')}")

    distiller = Distiller(copy.deepcopy(teacher), card, [StudentSpec(a) for a in archs], config, budget=budget,
                          callbacks=[progress], clock=CLOCKS[BUDGET_CLOCK[0]])
    started, cpu_started = time.perf_counter(), time.process_time()
    result = distiller.run(resume=False)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    _keep(result, f"{data.name} {label}")
    rep = result.report
    figures = {
        "wall_s": wall,
        "cpu_s": cpu,
        "budget_clock": BUDGET_CLOCK[0],
        "epochs": rep["epochs_completed"],
        "warmup_epochs": rep["warmup_epochs"],
        "kd_steps": rep["kd_steps"],
        "images_synthesized": rep["images_synthesized"],
        "images_per_s": rep["images_per_s"],
        "synthesis_images_per_s": rep.get("synthesis_images_per_s"),
        "kd_steps_per_s": rep.get("kd_steps_per_s"),
        "synthesis_share": rep["timings"]["synthesis_s"] / rep["timings"]["total_s"] if rep["timings"]["total_s"] else None,
        "kd_share": rep["timings"]["kd_s"] / rep["timings"]["total_s"] if rep["timings"]["total_s"] else None,
        "kd_updates": {n: s.get("kd_updates") for n, s in rep["students"].items()},
        "teacher_agreement": {n: s.get("teacher_agreement") for n, s in rep["students"].items()},
        "sizing": rep.get("sizing"),
        "pool_balance": rep["pool"]["balance"],
        "label_balance": rep["pool"]["label_balance"],
        "recognised_rate": rep["pool"]["recognised_rate"],
        "teacher_confidence": rep["pool"]["diversity"]["teacher_confidence"],
        "within_class_distance": rep["pool"]["diversity"]["within_class_feature_distance"],
        "timings": rep["timings"],
        "pool_teacher_argmax_histogram": rep["pool"]["teacher_argmax_histogram"],
        "pool_label_histogram": rep["pool"]["label_histogram"],
        "budget": rep["budget"],
        "students": _student_figures(result.students, data, device, teacher_test),
    }
    log(f"{label}: {wall:.1f}s, {figures['epochs']} epochs, balance {figures['pool_balance']:.2f}, test "
        + ", ".join(f"{n} {s['test_accuracy']:.4f}" for n, s in figures["students"].items()))
    return figures


BASELINE_FIELDS = ("label_bridging", "student_adv", "peer_beta", "num_generators", "diversity", "epochs", "warmup_epochs")


def _baseline_config(config: Any, dfmscd: dict[str, Any], match: str, budget_s: float) -> tuple[Any, Any]:
    """The Fast-DFKD ablation with the same per-student budget as the DF-MSCD run.

    ``epochs``: as many epochs as DF-MSCD completed, and as many of them spent in warm-up
    (synthesis only) as DF-MSCD actually spent, so that each student gets at most the KD updates
    its DF-MSCD counterpart got plus the remainder of one epoch (DF-MSCD's last epoch may be cut
    by its clock). ``seconds``: each baseline gets DF-MSCD's whole wall budget.
    """
    from dfmscd.config import Budget

    base = config.single_student_baseline()
    if match == "seconds":
        return base, Budget(seconds=budget_s)
    epochs = int(dfmscd["epochs"])
    kd_epochs = -(-int(dfmscd["kd_steps"]) // config.kd_steps)  # epochs that had any KD step
    warmup = max(0, min(epochs - 1, epochs - kd_epochs))
    # With an epoch budget the engine scales warm-up by budget/config epochs; make that factor 1.
    matched = type(base).model_validate({**base.model_dump(), "epochs": epochs, "warmup_epochs": warmup})
    return matched, Budget(epochs=epochs)


def _kd_real(teacher: torch.nn.Module, card: Any, arch: str, data: Dataset, epochs: int, temperature: float,
             device: torch.device, seed: int, teacher_test: float, budget_s: float | None = None,
             config: Any = None) -> dict[str, Any]:
    """KD on the real training images: ``epochs``, or ``budget_s`` seconds of the benchmark's clock with the
    data-free run's KD batch, learning rate and weight decay (``config``)."""
    from dfmscd.models import create_model

    c, h, _ = data.input_shape
    torch.manual_seed(seed)
    student = create_model(arch, data.num_classes, in_channels=c, image_size=h)
    extra = {} if config is None else {"lr": config.lr_s, "batch_size": config.kd_batch_size,
                                       "weight_decay": config.weight_decay}
    cpu0 = time.process_time()
    stats = train_kd_real(student, copy.deepcopy(teacher), data, epochs, temperature, device, seed=seed,
                          budget_s=budget_s, clock=CLOCKS[BUDGET_CLOCK[0]], **extra)
    figures = {"wall_s": stats.wall_s, "cpu_s": time.process_time() - cpu0, "epochs": stats.images / len(data.y_train),
               "kd_steps": stats.steps, "images_per_s": stats.images_per_s,
               **_student_figures({arch: student}, data, device, teacher_test)[arch]}
    log(f"kd-real {arch}: {stats.wall_s:.1f}s, {stats.steps} steps, test {figures['test_accuracy']:.4f}")
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", help="folder of the image archives (default ../shared/data; never downloaded)")
    p.add_argument("--train-teacher", action="store_true", help="train the teacher when benchmarks/teachers/ has none")
    p.add_argument("--budget", type=float, help="DF-MSCD wall-clock budget in seconds (default 300, --quick 45)")
    p.add_argument("--quick", action="store_true", help="short smoke run; results are written as <dataset>_quick.*")
    p.add_argument("--preset", default="balanced")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as in the CLI")
    p.add_argument("--students", help="comma-separated architectures (default per dataset)")
    p.add_argument("--teacher", help="teacher architecture (default per dataset)")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--kd-epochs", type=int, help="epochs of KD on real images (upper bound; --quick: a quarter)")
    p.add_argument("--baseline-match", choices=("epochs", "seconds"), default="epochs")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: baseline,kd_real")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the distillation runs")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split (and teacher)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--matrix", action="store_true", help="the equal-total-time comparison over --seeds and --arms")
    p.add_argument("--seeds", default="0,1,2", help="--matrix: comma-separated seeds")
    p.add_argument("--arms", default="dfmscd,ablation,preset_single", help=f"--matrix: any of {','.join(ARMS)}")
    p.add_argument("--tag", default="", help="--matrix: suffix of the result file names")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="combine --matrix result files of one set-up (e.g. one per seed, run in parallel) into "
                        "<dataset>_matrix_<T>s<tag>.json/.md")
    p.add_argument("--keep-students", type=Path, metavar="DIR",
                   help="save every run's students and calibration sample here (for benchmarks/int8.py)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="what a seconds budget counts: wall time, or this process's CPU time (fair on a shared machine)")
    return p.parse_args(argv)


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    stem = f"{args.dataset}_quick" if args.quick else args.dataset
    return args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"


def _save_partial(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """After each part, so that a long run that is stopped still leaves its figures."""
    from dfmscd.report import write_json_atomic

    write_json_atomic(_paths(args)[0], {**results, "complete": False})


COMPONENT_ABLATIONS = {  # DF-MSCD with one component switched off
    "no_label_bridging": {"label_bridging": False},
    "no_inter_student": {"student_adv": 0.0},
    "no_peer": {"peer_beta": 0.0},
    "no_mixture": {"num_generators": 1, "diversity": 0.0},
}
VARIANTS = {  # DF-MSCD with one setting changed (not an ablation: a candidate for the preset)
    "dfmscd_recognised": {"pool_admission": "recognised"},
}
# ``kd_real``: the ceiling, KD on the real training images with each student's single-student time (T/N),
# run on the first seed only.
ARMS = ("dfmscd", "ablation", "preset_single", "kd_real", *COMPONENT_ABLATIONS, *VARIANTS)


def _load_teacher(args: argparse.Namespace, data: Dataset, device: torch.device) -> tuple[Any, Any, dict[str, Any], dict[str, Path]]:
    recipe = RECIPES.get(data.name)
    arch = args.teacher or (recipe.arch if recipe else "resnet20")
    epochs = args.teacher_epochs or (recipe.epochs if recipe else 40)
    return get_teacher(data, arch, epochs, args.split_seed, device, log=log, train_missing=args.train_teacher)


def real_within_class_distance(teacher: torch.nn.Module, data: Dataset, per_class: int = 64) -> float | None:
    """The pool's diversity figure computed on real training images (same features, same cap)."""
    from dfmscd.engine.report import penultimate_features, within_class_distance

    y = data.y_train
    idx = torch.cat([torch.nonzero(y == c).flatten()[-per_class:] for c in range(data.num_classes)])
    feats = penultimate_features(teacher.eval(), data.normalise(data.x_train[idx]))
    return within_class_distance(feats, y[idx], data.num_classes)["mean"]


def run_matrix(args: argparse.Namespace) -> dict[str, Any]:
    """The comparison at equal total time (``--clock``), once per seed:
    ``dfmscd``: one run, N students, T s; ``ablation``: the Fast-DFKD ablation once per student
    with T/N s; ``preset_single``: our preset once per student with T/N s; ``kd_real``: KD on real
    images, T/N s per student, first seed only; the component ablations: DF-MSCD with one component
    off, N students, T s."""
    from dfmscd.cli import parse_set_option
    from dfmscd.config import Budget, resolve_config

    defaults = DEFAULTS[args.dataset]
    budget_s = args.budget if args.budget is not None else 300.0
    archs = (args.students or defaults["students"]).split(",")
    device = pick_device(args.device)
    data = load_dataset(args.dataset, args.data_dir, seed=args.split_seed, log=log)
    teacher, card, teacher_meta, paths = _load_teacher(args, data, device)
    teacher_test = accuracy(teacher, data, "test", device)
    real_div = real_within_class_distance(teacher, data)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    seeds = [int(v) for v in args.seeds.split(",")]
    out_json = args.out_dir / f"{args.dataset}_matrix_{budget_s:.0f}s{args.tag}.json"
    results: dict[str, Any] = {
        "dataset": args.dataset, "protocol": "matrix (equal total wall time)",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "split": {"seed": args.split_seed, "train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)},
        "teacher": {**teacher_meta, "test_accuracy": teacher_test, "weights": str(paths["weights"])},
        "real_within_class_distance": real_div,
        "preset": args.preset, "set": args.set, "budget_s": budget_s, "budget_clock": args.clock,
        "students": archs, "arms": arms, "seeds": seeds,
        "runs": [],
    }
    # One-time process costs (torch's first optimiser imports torch._dynamo: 5-40 s on this
    # machine) are paid here, not by whichever arm happens to run first.
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for seed in seeds:
        overrides = {**dict(parse_set_option(t) for t in args.set), "seed": seed, "device": args.device}
        config = resolve_config(args.preset, overrides)
        per_student = Budget(seconds=budget_s / len(archs))
        for arm in arms:
            if arm in ("dfmscd", *COMPONENT_ABLATIONS, *VARIANTS):
                cfg = config if arm == "dfmscd" else config.model_copy(update={**COMPONENT_ABLATIONS, **VARIANTS}[arm])
                figures = _distill(teacher, card, archs, cfg, Budget(seconds=budget_s), data, device, teacher_test,
                                   f"{arm} seed {seed}")
                students = figures.pop("students")
                for name, st in students.items():
                    results["runs"].append({"arm": arm, "seed": seed, "student": name, **figures, **st})
            elif arm == "kd_real":
                if seed != seeds[0]:
                    continue
                for arch in archs:
                    figures = _kd_real(teacher, card, arch, data, 1, config.temperature, device, seed, teacher_test,
                                       budget_s=budget_s / len(archs), config=config)
                    results["runs"].append({"arm": arm, "seed": seed, "student": arch, "budget_clock": args.clock, **figures})
            else:
                cfg = config.single_student_baseline() if arm == "ablation" else config
                for arch in archs:
                    figures = _distill(teacher, card, [arch], cfg, per_student, data, device, teacher_test,
                                       f"{arm} {arch} seed {seed}")
                    students = figures.pop("students")
                    results["runs"].append({"arm": arm, "seed": seed, "student": arch, **figures, **students[arch]})
            for r in results["runs"]:
                if r.get("within_class_distance") is not None and real_div:
                    r["diversity_ratio_to_real"] = r["within_class_distance"] / real_div
            from dfmscd.report import write_json_atomic

            write_json_atomic(out_json, {**results, "complete": False})
    from benchmarks.tables import matrix_summary

    results["summary"] = matrix_summary(results)
    return results


SETUP_KEYS = ("dataset", "budget_s", "budget_clock", "preset", "set", "students", "split", "real_within_class_distance")


def merge_matrices(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One matrix from several of the same set-up (teacher, split, budget, preset, students, CPU): the
    runs side by side, seeds and arms united. Refuses parts that differ in set-up or repeat a run. The
    teacher's cache path is the same on every machine, its weights are not (retrained on another CPU),
    so its accuracy is compared too."""
    from benchmarks.tables import matrix_summary

    def setup(part: dict[str, Any]) -> dict[str, Any]:
        teacher = part.get("teacher") or {}
        return {**{k: part.get(k) for k in SETUP_KEYS}, "teacher": teacher.get("weights"),
                "teacher_test_accuracy": teacher.get("test_accuracy"), "cpu": (part.get("machine") or {}).get("cpu")}

    first = parts[0]
    for part in parts[1:]:
        a, b = setup(first), setup(part)
        for key in a:
            if a[key] != b[key]:
                raise ValueError(f"cannot merge: {key} differs ({a[key]!r} vs {b[key]!r})")
    runs, seen = [], set()
    for part in parts:
        if not part.get("complete"):
            raise ValueError("cannot merge an incomplete matrix (its run was stopped)")
        for run in part["runs"]:
            ident = (run["arm"], run["seed"], run["student"])
            if ident in seen:
                raise ValueError(f"cannot merge: run {ident} appears twice")
            seen.add(ident)
            runs.append(run)
    merged = {**first, "runs": runs, "complete": True,
              "seeds": sorted({r["seed"] for r in runs}),
              "arms": list(dict.fromkeys(a for p in parts for a in p["arms"])),
              "merged_from": [p.get("created") for p in parts]}
    merged["summary"] = matrix_summary(merged)
    return merged


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dfmscd.cli import parse_set_option
    from dfmscd.config import Budget, resolve_config

    defaults = DEFAULTS[args.dataset]
    budget_s = args.budget if args.budget is not None else (45.0 if args.quick else 300.0)
    archs = (args.students or defaults["students"]).split(",")
    kd_epochs = args.kd_epochs or (max(1, defaults["kd_epochs"] // 4) if args.quick else defaults["kd_epochs"])
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    device = pick_device(args.device)

    data = load_dataset(args.dataset, args.data_dir, seed=args.split_seed, log=log)
    log(f"{args.dataset}: train {len(data.y_train)} / val {len(data.y_val)} / test {len(data.y_test)}, "
        f"input {list(data.input_shape)}, mean {data.mean}, std {data.std}")
    teacher, card, teacher_meta, paths = _load_teacher(args, data, device)
    teacher_test = accuracy(teacher, data, "test", device)

    overrides = {**dict(parse_set_option(t) for t in args.set), "seed": args.seed, "device": args.device}
    config = resolve_config(args.preset, overrides)
    results: dict[str, Any] = {
        "dataset": args.dataset,
        "run_kind": "quick smoke run (not the target measurement)" if args.quick else "full run",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "split": {"seed": args.split_seed, "train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)},
        "teacher": {**teacher_meta, "test_accuracy": teacher_test, "weights": str(paths["weights"]), "card": str(paths["card"])},
        "preset": args.preset,
        "overrides": overrides,
        "budget_s": budget_s,
        "baseline_match": args.baseline_match,
        "kd_real_epochs": kd_epochs,
        "students": archs,
    }

    log(f"DF-MSCD: {', '.join(archs)} for {budget_s:.0f}s ({args.preset})")
    dfmscd = _distill(teacher, card, archs, config, Budget(seconds=budget_s), data, device, teacher_test, "dfmscd")
    results["dfmscd"] = dfmscd
    _save_partial(args, results)

    if "baseline" not in skip:
        base_cfg, base_budget = _baseline_config(config, dfmscd, args.baseline_match, budget_s)
        results["baseline_config"] = {"budget": base_budget.model_dump(exclude_none=True),
                                      **{k: getattr(base_cfg, k) for k in BASELINE_FIELDS}}
        results["baseline"] = {}
        for arch in archs:
            log(f"baseline {arch}: {base_budget.model_dump(exclude_none=True)}")
            figures = _distill(teacher, card, [arch], base_cfg, base_budget, data, device, teacher_test, f"baseline {arch}")
            results["baseline"][arch] = {**{k: v for k, v in figures.items() if k != "students"}, **figures["students"][arch]}
            _save_partial(args, results)

    if "kd_real" not in skip:
        results["kd_real"] = {}
        for arch in archs:
            results["kd_real"][arch] = _kd_real(teacher, card, arch, data, kd_epochs, config.temperature, device,
                                                args.seed, teacher_test)
            _save_partial(args, results)

    results["targets"] = target_checks(results)
    return results


def _write_matrix(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """``<dataset>_matrix_<T>s<tag>.json`` and ``.md`` in ``--out-dir``; the table is also printed."""
    from benchmarks.tables import matrix_markdown
    from dfmscd.report import write_json_atomic, write_text_atomic

    stem = args.out_dir / f"{results['dataset']}_matrix_{results['budget_s']:.0f}s{args.tag}"
    table = matrix_markdown(results)
    write_json_atomic(stem.with_suffix(".json"), results)
    write_text_atomic(stem.with_suffix(".md"), table)
    print(table)


def main(argv: list[str] | None = None) -> int:
    from dfmscd.errors import DfmscdError
    from dfmscd.report import write_json_atomic, write_text_atomic

    args = parse_args(argv)
    BUDGET_CLOCK[0] = args.clock
    KEEP_DIR[0] = args.keep_students
    if args.merge:
        import json

        try:
            results = merge_matrices([json.loads(path.read_text()) for path in args.merge])
        except (OSError, ValueError) as exc:
            print(f"benchmark: error: {exc}", file=sys.stderr)
            return 2
        _write_matrix(args, results)
        return 0
    if args.matrix:
        try:
            results = run_matrix(args)
        except (DatasetUnavailable, TeacherMissing) as exc:
            print(f"benchmark: error: {exc}", file=sys.stderr)
            return 2
        _write_matrix(args, {**results, "complete": True})
        return 0
    try:
        results = run(args)
    except (DatasetUnavailable, TeacherMissing, DfmscdError) as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    json_path, md_path = _paths(args)
    table = markdown_report(results)
    write_json_atomic(json_path, {**results, "complete": True})
    write_text_atomic(md_path, table)
    print(table)
    log(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
