"""What a finished run leaves behind, the one writer: the CLI writes these files into its
``--out`` folder, the worker into storage, so both deliver the same students and the same
samples grid. Each output is a name and a function that writes it to a path (atomically).

Every student file is verified as it is written (``dfmscd.deploy.export_verified``: on the run's
held-out images; INT8 calibrated on its calibration sample), and its ``write`` returns the
``ExportedFile`` with the figures; a float file that fails verification raises ``ExportError``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dfmscd.deploy import ExportedFile, export_verified
from dfmscd.formats import CALIBRATED_FORMATS, NATIVE_FORMAT, file_name
from dfmscd.io import ModelCard
from dfmscd.io.quantize import Int8Settings
from dfmscd.report import save_samples_png
from dfmscd.student_report import LatencySettings, run_student_report as _student_report

SAMPLES_NAME = "samples.png"
STUDENT_REPORT_NAME = "student_report.json"
SAMPLES_PER_CLASS = 8


@dataclass(frozen=True)
class RunOutput:
    name: str  # file name: resnet8.safetensors, resnet8.onnx, samples.png
    kind: Literal["student", "export", "samples"]
    student: str | None
    fmt: str | None
    write: Callable[[Path], Any]  # students and exports: returns the dfmscd.deploy.ExportedFile


def run_outputs(result: Any, teacher_card: ModelCard, exports: Iterable[str] = (),
                int8: Int8Settings | None = None) -> list[RunOutput]:
    """Students (safetensors with their card, then each export format, each verified), then the
    samples grid (rows: the teacher's class of each sample, as the engine reports it)."""
    calibration = getattr(result, "calibration", None)
    holdout = getattr(result, "holdout", None)
    # A run cancelled before its pool held an image has nothing to calibrate INT8 on: no such file then
    # (report.json's "files" lists what was written); every other failure to export raises.
    calibrated = calibration is not None and len(calibration) > 0
    exports = [f for f in dict.fromkeys(exports) if f != NATIVE_FORMAT and (calibrated or f not in CALIBRATED_FORMATS)]
    out: list[RunOutput] = []
    for name, module in result.students.items():
        card = result.cards[name]
        out += [RunOutput(file_name(name, fmt), "student" if fmt == NATIVE_FORMAT else "export", name, fmt,
                          lambda p, m=module, c=card, f=fmt, n=name: export_verified(
                              f, m, c, p, calibration=calibration, holdout=holdout, student=n, int8=int8))
                for fmt in (NATIVE_FORMAT, *exports)]
    samples = getattr(result, "samples", None)
    if samples is not None and samples.numel() > 0:
        out.append(RunOutput(SAMPLES_NAME, "samples", None, None, lambda p: save_samples_png(
            samples, result.sample_labels, p, per_class=SAMPLES_PER_CLASS,
            class_names=teacher_card.class_names, num_classes=teacher_card.num_classes)))
    return out


def run_student_report(result: Any, exported: Mapping[str, Mapping[str, ExportedFile]], teacher: Any = None,
                       latency: LatencySettings | None = LatencySettings()) -> dict[str, Any]:
    """The student report of a run (``dfmscd.student_report``) from the ``ExportedFile``s its
    outputs' ``write`` returned (by student, then format): sizes, latency per format on this CPU,
    agreement with ``teacher`` on the run's held-out images, verification figures."""
    students = {name: (module, result.cards[name]) for name, module in result.students.items() if name in exported}
    return _student_report(students, exported, teacher=teacher, holdout=getattr(result, "holdout", None),
                  calibration=getattr(result, "calibration", None), latency=latency)
