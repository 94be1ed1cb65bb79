"""``dfmscd distill``: run the Distiller and write students, report.json and samples.png.

Ctrl-C (or SIGTERM) asks the engine to stop at the next step boundary; whatever the students
have learnt so far is still written, with ``status: cancelled`` in the report. A second Ctrl-C
aborts at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dfmscd.cli.options import EXIT_INTERRUPTED, EXIT_OK, PROG, parse_set_option, parse_student_option
from dfmscd.errors import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
REPORT_NAME = "report.json"
PLAIN_PROGRESS_EVERY_S = 30.0  # without a terminal, a heartbeat line during long epochs


def _log(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


class CancelFlag:
    """Turns the first SIGINT/SIGTERM into a cooperative cancel; the second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        _log("cancelling after the current step; partial students will be saved (press Ctrl-C again to abort)")

    def __enter__(self) -> "CancelFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _scalars(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten one level of nesting ({"loss": {"vgg8": 0.1}} -> loss.vgg8) keeping numbers only."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out.append((name, value))
        elif isinstance(value, dict) and not prefix:
            out.extend(_scalars(value, prefix=f"{name}."))
    return out


# Shown per epoch (in this order) when the engine reports them; everything else stays in report.json.
SHOWN_METRICS = ("student_loss", "pool_size", "pool_balance", "images_per_s", "elapsed_s")


def _metric_fields(data: dict[str, Any]) -> list[tuple[str, Any]]:
    chosen = {k: data[k] for k in SHOWN_METRICS if k in data}
    return _scalars(chosen) if chosen else _scalars(data)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressPrinter:
    """Engine events -> a tqdm bar on a terminal, or one plain line per metrics event otherwise."""

    def __init__(self, interactive: bool, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar = None
        if interactive and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        self._last_plain = time.monotonic()
        self._logged: set[str] = set()  # log messages shown, so the sizing event's message shows once

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(f"{PROG}: {line}", file=sys.stderr)
        else:
            _log(line)

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        kind, data = getattr(event, "kind", ""), getattr(event, "data", {}) or {}
        progress = float(getattr(event, "progress", 0.0) or 0.0)
        epoch = getattr(event, "epoch", 0)
        if kind == "log":
            self._logged.add(str(data.get("message", "")))
        if kind == "sizing":  # what the seconds budget buys on this device, measured at the start
            message = str(data.get("message") or "")
            if message and message not in self._logged:
                self._write(message)
            return
        if self.bar is not None:
            self.bar.n = max(self.bar.n, min(1000, int(progress * 1000)))
            self.bar.set_description(f"epoch {epoch}", refresh=False)
            if kind == "metrics":
                self.bar.set_postfix_str(" ".join(f"{k}={_fmt(v)}" for k, v in _metric_fields(data)), refresh=False)
            elif kind in ("log", "checkpoint"):
                self.bar.write(f"{PROG}: {data.get('message', kind)}", file=sys.stderr)
            self.bar.refresh()
            return
        if kind == "metrics":
            fields = " ".join(f"{k}={_fmt(v)}" for k, v in _metric_fields(data))
            line = f"epoch {epoch} {progress * 100:5.1f}% {fields}".rstrip()
        elif kind == "log":
            line = str(data.get("message", data))
        elif kind == "checkpoint":
            line = f"epoch {epoch} checkpoint saved"
        elif kind == "progress" and time.monotonic() - self._last_plain >= PLAIN_PROGRESS_EVERY_S:
            line = f"epoch {epoch} {progress * 100:5.1f}% {data.get('phase', '')}".rstrip()
        else:
            return
        _log(line)
        self._last_plain = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _students(values: list[str]) -> list[Any]:
    from dfmscd.engine import StudentSpec
    from dfmscd.models import is_model
    from dfmscd.errors import UnknownArchitectureError

    specs = []
    for text in values:
        name, arch = parse_student_option(text)
        if not is_model(arch):
            raise UnknownArchitectureError(f"unknown student architecture {arch!r}; run '{PROG} architectures' for the list")
        specs.append(StudentSpec(architecture=arch, name=name))
    return specs


def _config(args: argparse.Namespace) -> Any:
    from dfmscd.config import resolve_config

    overrides = dict(parse_set_option(text) for text in args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.device is not None:
        overrides["device"] = args.device
    return resolve_config(args.preset, overrides)


def _prepare_out(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_outputs(result: Any, out: Path, teacher_card: Any, exports: list[str], extra: dict[str, Any],
                  teacher: Any = None, latency_repeats: int = 5) -> dict[str, Any]:
    """Students (+exports, each verified), samples.png, student_report.json and report.json;
    returns the files written (names relative to ``out``, so the folder can be moved or served as is)."""
    from dfmscd.outputs import STUDENT_REPORT_NAME, run_outputs, run_student_report  # deferred on purpose: loads torch
    from dfmscd.report import write_json_atomic
    from dfmscd.student_report import LatencySettings

    files: dict[str, Any] = {"students": {}, "exports": {}}
    exported: dict[str, dict[str, Any]] = {}
    for output in run_outputs(result, teacher_card, exports):
        written = output.write(out / output.name)
        if output.kind in ("student", "export"):
            exported.setdefault(output.student, {})[output.fmt] = written
            if written.flagged:
                _log(f"warning: {written.verification.message}")
        if output.kind == "student":
            files["students"][output.student] = output.name
        elif output.kind == "export":
            files["exports"].setdefault(output.student, {})[output.fmt] = output.name
        else:
            files["samples"] = output.name
    latency = LatencySettings(repeats=latency_repeats) if latency_repeats > 0 else None
    write_json_atomic(out / STUDENT_REPORT_NAME, run_student_report(result, exported, teacher, latency))
    files["student_report"] = STUDENT_REPORT_NAME
    files["report"] = REPORT_NAME
    files["checkpoint"] = CHECKPOINT_NAME if (out / CHECKPOINT_NAME).exists() else None
    report = {**result.report, "status": result.status, **extra, "files": files}
    write_json_atomic(out / REPORT_NAME, report)
    return files


def _summary(result: Any, out: Path, files: dict[str, Any], wall: float) -> None:
    print(f"status: {result.status} ({wall:.1f}s)")
    per_student = result.report.get("students") if isinstance(result.report, dict) else None
    for name, path in files["students"].items():
        metrics = per_student.get(name, {}) if isinstance(per_student, dict) else {}
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in _scalars(metrics) if "." not in k)
        print(f"  {name}: {out / path} {shown}".rstrip())
    for key in ("samples", "student_report", "report"):
        if files.get(key):
            print(f"  {key}: {out / files[key]}")


def advice(teacher: Any, card: Any, students: list[Any]) -> list[str]:
    """What the service also warns about: a card whose mean/std the teacher's BN statistics
    contradict, and one student taking most of every shared KD step (dfmscd.normalisation, dfmscd.costs)."""
    from dfmscd.costs import dominant_student_warning, estimate_cost
    from dfmscd.engine.students import build_student
    from dfmscd.normalisation import normalisation_warnings

    out = normalisation_warnings(teacher, card)
    costs: dict[str, int | None] = {}
    for i, spec in enumerate(students):
        if spec.architecture.startswith(("tv/", "timm/")):
            costs[f"{spec.resolved_name}#{i}"] = None  # possibly large: not built twice just for an estimate
        else:
            costs[spec.resolved_name] = estimate_cost(build_student(spec, card.num_classes, card.input_shape), card.input_shape)
    slow = dominant_student_warning(costs)
    return out + ([slow] if slow else [])


def run_distill(args: argparse.Namespace) -> int:
    from dfmscd.config import Budget
    from dfmscd.engine import Distiller
    from dfmscd.io import load_teacher, read_card

    students = _students(args.student)
    config = _config(args)
    budget = Budget.parse(args.budget) if args.budget else None
    card = read_card(args.card)
    teacher = load_teacher(args.teacher, card)
    for warning in advice(teacher, card, students):
        _log(f"warning: {warning}")
    out = _prepare_out(args.out)
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.exists() and not args.resume:
        _log(f"{checkpoint} exists; starting afresh and overwriting it (use --resume to continue instead)")
    elif args.resume and not checkpoint.exists():
        _log(f"no {checkpoint} to resume from; starting afresh")

    printer = ProgressPrinter(interactive=sys.stderr.isatty(), quiet=args.quiet)
    started = time.monotonic()
    try:
        with CancelFlag() as cancel:
            distiller = Distiller(teacher, card, students, config, budget=budget, callbacks=[printer],
                                  should_cancel=cancel, checkpoint_path=checkpoint)
            result = distiller.run(resume=args.resume)
    finally:
        printer.close()
    extra = {"cli": {"teacher": str(args.teacher), "card": str(args.card), "preset": args.preset,
                     "budget": args.budget, "resume_requested": bool(args.resume), "exports": args.export}}
    files = write_outputs(result, out, card, args.export, extra, teacher=teacher,
                          latency_repeats=getattr(args, "latency_repeats", 5))
    _summary(result, out, files, time.monotonic() - started)
    # Nothing fails silently: a budget below what the students need, students that barely agree
    # with the teacher, classes that never reached the pool (also in report.json's "warnings").
    for warning in (result.report or {}).get("warnings") or []:
        _log(f"warning: {warning}")
    return EXIT_OK if result.status == "completed" else EXIT_INTERRUPTED


__all__ = ["run_distill", "write_outputs", "ProgressPrinter", "CancelFlag"]
