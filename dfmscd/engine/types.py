"""The engine's public data types: what a caller passes in and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.nn as nn

from dfmscd.errors import ConfigError
from dfmscd.io.card import ModelCard
from dfmscd.names import STUDENT_NAME_RULE, default_student_name, is_valid_student_name

@dataclass
class StudentSpec:
    """One student to distill: a zoo architecture, an optional unique name and its kwargs."""

    architecture: str
    name: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def resolved_name(self) -> str:
        """The name, or the architecture with ``/`` (as in ``tv/resnet18``) replaced by ``_``."""
        return self.name if self.name is not None else default_student_name(self.architecture)


def check_student_names(specs: list[StudentSpec]) -> list[str]:
    """Resolved names, validated: unique, and by the one rule of ``dfmscd.names``."""
    if not specs:
        raise ConfigError("at least one student is needed")
    names = [s.resolved_name for s in specs]
    for name in names:
        if not is_valid_student_name(name):
            raise ConfigError(f"invalid student name {name!r}: use {STUDENT_NAME_RULE}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"student name {name!r} is used twice; give each student a distinct name")
        seen.add(name)
    return names


class Outcome(str, Enum):
    """How a phase, an epoch or a run ended. A ``str`` Enum: ``Outcome.CANCELLED == "cancelled"``
    and JSON writes the plain value, so callers comparing with the old strings keep working."""

    DONE = "done"  # a phase or an epoch ran to its end
    OUT_OF_TIME = "out_of_time"  # the seconds budget ended it
    CANCELLED = "cancelled"
    COMPLETED = "completed"  # a run's status: the budget was used up

    def __str__(self) -> str:
        return self.value


class Phase(str, Enum):
    """The ``phase`` of a progress event."""

    SYNTHESIS = "synthesis"
    DISTILLATION = "distillation"

    def __str__(self) -> str:
        return self.value


@dataclass
class Event:
    """A callback payload. ``kind``: "progress" | "metrics" | "log" | "checkpoint"."""

    kind: str
    epoch: int
    progress: float
    data: dict[str, Any]


@dataclass
class DistillResult:
    status: str  # "completed" | "cancelled"
    students: dict[str, nn.Module]  # by name, eval mode, on CPU
    cards: dict[str, ModelCard]
    report: dict[str, Any]  # JSON-serialisable
    samples: torch.Tensor  # uint8 N×C×H×W: a few pooled images per class
    sample_labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    # sample_labels: int64 N, the teacher's class for each sample (what the image shows it)
    calibration: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    # calibration: uint8 N×C×H×W, a class-balanced sample of the pool (engine.samples.pick_calibration)
    holdout: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    # holdout: uint8 N×C×H×W, fresh synthetic images no student trained on and not in the calibration
    # sample (the held-out agreement round): what exported files are verified on
