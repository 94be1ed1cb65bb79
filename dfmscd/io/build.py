"""From a card and a state_dict to a ready module, with errors that say which key is wrong."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dfmscd.errors import CardError, CheckpointError, ConfigError, UnknownArchitectureError
from dfmscd.io.card import ModelCard, parse_card, read_card
from dfmscd.io.checkpoint import MAX_CHECKPOINT_BYTES, load_state_dict
from dfmscd.models import check_model_arguments, create_model
from dfmscd.models.layers import tracked_batchnorms

CardLike = ModelCard | Mapping[str, Any] | str | os.PathLike[str]


def as_card(card: CardLike) -> ModelCard:
    """A ModelCard, a dict, or the path of a card JSON file."""
    if isinstance(card, ModelCard):
        return card
    if isinstance(card, Mapping):
        return parse_card(dict(card))
    return read_card(card)


def validate_card(card: ModelCard) -> ModelCard:
    """The card's architecture exists and accepts its arch_kwargs (no model is built)."""
    c, h, _ = card.input_shape
    try:
        check_model_arguments(card.architecture, card.num_classes, c, h, **card.arch_kwargs)
    except (UnknownArchitectureError, ConfigError) as exc:
        raise CardError(f"invalid model card: {exc}") from None
    return card


def has_batchnorm(module: nn.Module) -> bool:
    """True when the module has BN layers that track running statistics (what L_BN matches)."""
    return bool(tracked_batchnorms(module))


def instantiate(card: ModelCard) -> nn.Module:
    """A freshly initialised model for ``card`` (CardError if the card cannot describe one)."""
    validate_card(card)
    c, h, _ = card.input_shape
    try:
        return create_model(card.architecture, card.num_classes, c, h, **card.arch_kwargs)
    except (UnknownArchitectureError, ConfigError) as exc:
        raise CardError(f"invalid model card: {exc}") from None


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], architecture: str) -> None:
    """Raise CheckpointError naming the first mismatching key (architecture order, then file order).

    A missing ``num_batches_tracked`` is tolerated: checkpoints from PyTorch < 0.4.1 lack it and
    it does not affect inference or the BN-statistics loss.
    """
    problems: list[str] = []
    for key, ref in expected.items():
        if key not in found:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"missing key {key!r}")
        elif _shape(found[key]) != _shape(ref):
            problems.append(f"shape mismatch for {key!r}: file has {_shape(found[key])}, {architecture} expects {_shape(ref)}")
    problems += [f"unexpected key {key!r}" for key in found if key not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else ""
        raise CheckpointError(f"weights do not match architecture {architecture!r}: {problems[0]}{more}")


def build_model(card: ModelCard, state_dict: Mapping[str, torch.Tensor], require_batchnorm: bool = False) -> nn.Module:
    """Instantiate the card's architecture, check and load the weights, return it in eval mode."""
    model = instantiate(card)
    if require_batchnorm and not has_batchnorm(model):
        raise CheckpointError(
            f"architecture {card.architecture!r} has no BatchNorm layers; DF-MSCD synthesizes data by matching "
            "the teacher's BatchNorm running statistics, so the teacher must contain BatchNorm layers"
        )
    expected = model.state_dict()
    check_state_dict(expected, state_dict, card.architecture)
    full = dict(state_dict)
    for key, ref in expected.items():
        full.setdefault(key, ref)  # only num_batches_tracked can be absent here
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # pragma: no cover - check_state_dict catches what torch would
        raise CheckpointError(f"weights do not load into {card.architecture!r}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def load_teacher(weights_path: str | os.PathLike[str], card: CardLike, max_bytes: int = MAX_CHECKPOINT_BYTES) -> nn.Module:
    """Read a user's teacher: safe load, key/shape check, and BatchNorm required."""
    card = validate_card(as_card(card))
    return build_model(card, load_state_dict(Path(weights_path), max_bytes=max_bytes), require_batchnorm=True)
