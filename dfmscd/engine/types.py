"""The engine's public data types: what a caller passes in and what it gets back."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.nn as nn

from dfmscd.errors import ConfigError
from dfmscd.io.card import ModelCard

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class StudentSpec:
    """One student to distill: a zoo architecture, an optional unique name and its kwargs."""

    architecture: str
    name: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def resolved_name(self) -> str:
        """The name, or the architecture with ``/`` (as in ``tv/resnet18``) replaced by ``_``."""
        return self.name if self.name is not None else self.architecture.replace("/", "_")


def check_student_names(specs: list[StudentSpec]) -> list[str]:
    """Resolved names, validated: unique, ``[A-Za-z0-9_.-]{1,64}``, not starting with ``.``."""
    if not specs:
        raise ConfigError("at least one student is needed")
    names = [s.resolved_name for s in specs]
    for name in names:
        if not _NAME_RE.match(name) or name.startswith("."):
            raise ConfigError(
                f"invalid student name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - and do not start with '.'"
            )
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
