"""Exports of *our* trained students to deployment formats (never used to read user files)."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from dfmscd.errors import CheckpointError
from dfmscd.io.atomic import atomic_path
from dfmscd.io.card import ModelCard

ONNX_OPSET = 17


def _example(card: ModelCard, batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, *card.input_shape)


def _frozen_copy(module: nn.Module) -> nn.Module:
    """Export a CPU eval-mode copy so the caller's module (device, train mode) is untouched."""
    return copy.deepcopy(module).to("cpu").eval()


def export_onnx(module: nn.Module, card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """ONNX graph with input ``input`` (N x C x H x W, dynamic N, normalised) and output ``logits``."""
    model = _frozen_copy(module)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (_example(card),), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as exc:  # noqa: BLE001 - exporter failures become one line
            raise CheckpointError(f"ONNX export of {card.architecture!r} failed: {str(exc).splitlines()[0]}") from None
    return path


def export_torchscript(module: nn.Module, card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """Traced TorchScript at the card's input size (the batch size stays free)."""
    model = _frozen_copy(module)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model, _example(card), check_trace=False)
            traced.save(str(tmp))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"TorchScript export of {card.architecture!r} failed: {str(exc).splitlines()[0]}") from None
    return path
