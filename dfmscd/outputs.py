"""What a finished run leaves behind, the one writer: the CLI writes these files into its
``--out`` folder, the worker into storage, so both deliver the same students and the same
samples grid. Each output is a name and a function that writes it to a path (atomically)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dfmscd.formats import NATIVE_FORMAT, file_name
from dfmscd.io import ModelCard, export_as, save_model
from dfmscd.report import save_samples_png

SAMPLES_NAME = "samples.png"
SAMPLES_PER_CLASS = 8


@dataclass(frozen=True)
class RunOutput:
    name: str  # file name: resnet8.safetensors, resnet8.onnx, samples.png
    kind: Literal["student", "export", "samples"]
    student: str | None
    fmt: str | None
    write: Callable[[Path], Any]


def run_outputs(result: Any, teacher_card: ModelCard, exports: Iterable[str] = ()) -> list[RunOutput]:
    """Students (safetensors with their card, then each export format), then the samples grid
    (rows: the teacher's class of each sample, as the engine reports it)."""
    exports = list(exports)
    out: list[RunOutput] = []
    for name, module in result.students.items():
        card = result.cards[name]
        out.append(RunOutput(file_name(name, NATIVE_FORMAT), "student", name, NATIVE_FORMAT,
                             lambda p, m=module, c=card: save_model(m, c, p)))
        out += [RunOutput(file_name(name, fmt), "export", name, fmt,
                          lambda p, m=module, c=card, f=fmt: export_as(f, m, c, p)) for fmt in exports]
    samples = getattr(result, "samples", None)
    if samples is not None and samples.numel() > 0:
        out.append(RunOutput(SAMPLES_NAME, "samples", None, None, lambda p: save_samples_png(
            samples, result.sample_labels, p, per_class=SAMPLES_PER_CLASS,
            class_names=teacher_card.class_names, num_classes=teacher_card.num_classes)))
    return out
