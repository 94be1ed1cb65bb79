"""Exports of *our* trained students to deployment formats (never used to read user files)."""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from dfmscd.errors import ExportError
from dfmscd.formats import EXPORT_FORMATS
from dfmscd.atomic import atomic_path
from dfmscd.io.card import ModelCard

ONNX_OPSET = 17
TORCHSCRIPT_CARD_FILE = "dfmscd_card.json"


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
            raise ExportError(f"onnx export of {card.architecture!r} failed: {str(exc).splitlines()[0]}") from None
        _add_onnx_metadata(tmp, card)
    return path


def onnx_metadata(card: ModelCard) -> dict[str, str]:
    """What an ONNX consumer needs to feed the graph: the preprocessing and the whole card.

    The graph expects ``(pixels in [0, 1] - mean) / std`` per channel; without mean/std in the
    file a deployment has to guess them, and a wrong guess costs accuracy silently.
    """
    return {
        "dfmscd_card": card.to_json(),
        "mean": json.dumps(list(card.mean)),
        "std": json.dumps(list(card.std)),
        "input_shape": json.dumps(list(card.input_shape)),
        "preprocessing": "x = (pixels / 255 - mean) / std per channel, layout N x C x H x W",
        "architecture": card.architecture,
        "num_classes": str(card.num_classes),
    }


def _add_onnx_metadata(path: Path, card: ModelCard) -> None:
    import onnx  # deferred on purpose: only ONNX exports need it

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in onnx_metadata(card).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def export_torchscript(module: nn.Module, card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """Traced TorchScript at the card's input size (the batch size stays free); the card is inside the
    archive as the extra file ``dfmscd_card.json`` (``torch.jit.load(path, _extra_files=...)``)."""
    model = _frozen_copy(module)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model, _example(card), check_trace=False)
            traced.save(str(tmp), _extra_files={TORCHSCRIPT_CARD_FILE: card.to_json()})
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"torchscript export of {card.architecture!r} failed: {str(exc).splitlines()[0]}") from None
    return path


def export_as(fmt: str, module: nn.Module, card: ModelCard, path: str | os.PathLike[str],
              calibration: torch.Tensor | None = None) -> Path:
    """Export to one of ``dfmscd.formats.EXPORT_FORMATS`` (``onnx``, ``torchscript``, ``onnx-int8``).
    ``onnx-int8`` needs ``calibration`` (uint8 N x C x H x W, e.g. ``DistillResult.calibration``);
    without it, ``ExportError``. Unverified: ``dfmscd.deploy.export_verified`` checks the file too."""
    if fmt == "onnx-int8":
        from dfmscd.io.quantize import export_onnx_int8

        if calibration is None or len(calibration) == 0:
            raise ExportError(f"onnx-int8 export of {card.architecture!r} needs the run's calibration images; "
                              "INT8 files are made when a run ends")
        return export_onnx_int8(module, card, path, calibration)
    exporters = {"onnx": export_onnx, "torchscript": export_torchscript}
    if fmt not in exporters:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    return exporters[fmt](module, card, path)
