"""Checks a Distiller makes before any heavy work, so bad input fails fast with a clear error."""

from __future__ import annotations

import torch
import torch.nn as nn

from dfmscd.engine.types import StudentSpec
from dfmscd.errors import CardError, ConfigError
from dfmscd.io.card import ModelCard, parse_card
from dfmscd.models.layers import tracked_batchnorms


def student_card(spec: StudentSpec, teacher_card: ModelCard) -> ModelCard:
    """The student's card: its architecture with the teacher's input contract and classes."""
    card = teacher_card
    try:
        return parse_card(
            dict(
                architecture=spec.architecture,
                num_classes=card.num_classes,
                input_shape=list(card.input_shape),
                mean=list(card.mean),
                std=list(card.std),
                arch_kwargs=dict(spec.arch_kwargs),
                **({"class_names": list(card.class_names)} if card.class_names else {}),
            )
        )
    except CardError as exc:
        raise ConfigError(f"student {spec.resolved_name!r}: {exc}") from None


def check_teacher(teacher: nn.Module, card: ModelCard) -> None:
    """The teacher needs BN running statistics and must map the card's input to its classes."""
    if not tracked_batchnorms(teacher):
        raise ConfigError(
            "the teacher has no BatchNorm layers with running statistics; data-free synthesis "
            "matches those statistics and cannot work without them"
        )
    param = next(teacher.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    modes = {m: m.training for m in teacher.modules()}
    teacher.eval()
    try:
        with torch.no_grad():
            out = teacher(torch.zeros((2, *card.input_shape), device=device))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CardError(f"the teacher does not accept input of shape {list(card.input_shape)}: {reason}") from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    if out.dim() != 2 or out.shape[1] != card.num_classes:
        raise CardError(f"the teacher outputs shape {list(out.shape[1:])} but the card says {card.num_classes} classes")
