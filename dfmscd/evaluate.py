"""Accuracy of a model on a labelled ``.npz`` (arrays ``x`` and ``y``), as ``dfmscd evaluate`` reports it.

Input convention (documented contract): ``x`` is uint8 in [0, 255] (scaled to [0, 1]) or float
already in [0, 1] (values outside [-0.001, 1.001] are refused: they are almost always unscaled
pixels or already-normalised data); then the card's mean/std are applied. Layouts N x C x H x W,
N x H x W (1-channel cards) and N x H x W x C are accepted; the size must equal the card's
(no silent resizing). ``y`` holds integer class indices in [0, num_classes).
The file is read with ``allow_pickle=False``: an ``.npz`` is data only.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dfmscd.errors import DfmscdError
from dfmscd.io.card import ModelCard

MAX_NPZ_BYTES = 2 * 1024**3  # declared uncompressed size of x and y together
_FLOAT_SLACK = 1e-3


class LabelledDataError(DfmscdError):
    """The labelled evaluation data is unreadable or does not fit the model card."""


def read_labelled_npz(path: str | os.PathLike[str], card: ModelCard, max_bytes: int = MAX_NPZ_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: x float32 N x C x H x W normalised with the card, y int64 N."""
    path = Path(path)
    label = path.name
    _check_npz_container(path, label, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise LabelledDataError(f"{label}: needs arrays 'x' and 'y', found {sorted(data.files)}")
            x, y = data["x"], data["y"]
    except LabelledDataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise LabelledDataError(f"{label}: unreadable .npz ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return to_model_input(x, card, label), _labels(y, x.shape[0], card, label)


def _check_npz_container(path: Path, label: str, max_bytes: int) -> None:
    if not path.is_file():
        raise LabelledDataError(f"{label}: file not found")
    if not zipfile.is_zipfile(path):
        raise LabelledDataError(f"{label}: not an .npz archive (numpy.savez) with arrays 'x' and 'y'")
    with zipfile.ZipFile(path) as zf:
        declared = sum(i.file_size for i in zf.infolist())
    if declared > max_bytes:
        raise LabelledDataError(f"{label}: arrays would take {declared} bytes (limit {max_bytes})")


def to_model_input(x: np.ndarray, card: ModelCard, label: str = "x") -> torch.Tensor:
    """Layout, scaling and normalisation of raw images for a model described by ``card``."""
    c, h, w = card.input_shape
    if x.dtype == np.uint8:
        scaled = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        scaled = x.astype(np.float32)
        if scaled.size:
            if not np.isfinite(scaled).all():
                raise LabelledDataError(f"{label}: x contains NaN or Inf")
            lo, hi = float(scaled.min()), float(scaled.max())
            if lo < -_FLOAT_SLACK or hi > 1 + _FLOAT_SLACK:
                raise LabelledDataError(
                    f"{label}: float x must be in [0, 1] (found {lo:.4g}..{hi:.4g}); pass uint8 pixels or scale to [0, 1]"
                )
    else:
        raise LabelledDataError(f"{label}: x has dtype {x.dtype}; expected uint8 or float")
    expected = f"N x {c} x {h} x {w} (or N x {h} x {w} x {c}{', or N x %d x %d' % (h, w) if c == 1 else ''})"
    if scaled.ndim == 3 and c == 1 and scaled.shape[1:] == (h, w):
        scaled = scaled[:, None]
    elif scaled.ndim == 4 and scaled.shape[1:] == (c, h, w):
        pass
    elif scaled.ndim == 4 and scaled.shape[1:] == (h, w, c):
        scaled = np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))
    else:
        raise LabelledDataError(f"{label}: x has shape {tuple(x.shape)}; the model card expects {expected}")
    if scaled.shape[0] == 0:
        raise LabelledDataError(f"{label}: x holds no images")
    t = torch.from_numpy(scaled)
    mean = torch.tensor(card.mean, dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32).view(1, c, 1, 1)
    return (t - mean) / std


def _labels(y: np.ndarray, n: int, card: ModelCard, label: str) -> torch.Tensor:
    if not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
        raise LabelledDataError(f"{label}: y has dtype {y.dtype}; expected integer class indices")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or y.shape[0] != n:
        raise LabelledDataError(f"{label}: y has shape {tuple(y.shape)}; expected ({n},), one label per image")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= card.num_classes):
        raise LabelledDataError(
            f"{label}: labels must be in [0, {card.num_classes - 1}], found {int(y.min())}..{int(y.max())}"
        )
    return torch.from_numpy(y.astype(np.int64))


@torch.no_grad()
def predict(module: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for ``x`` (already normalised), in batches, in eval mode; the module's mode is restored."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    was_training = module.training
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    module.eval()
    try:
        return torch.cat([module(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)])
    finally:
        module.train(was_training)


def evaluate(module: nn.Module, card: ModelCard | None, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1]; with a card, x's per-image shape must be the card's input shape."""
    if card is not None and tuple(x.shape[1:]) != tuple(card.input_shape):
        raise LabelledDataError(f"x has images of shape {tuple(x.shape[1:])}, the model expects {tuple(card.input_shape)}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise LabelledDataError(f"x has {x.shape[0]} images and y {y.shape[0]} labels; need the same non-zero count")
    correct = (predict(module, x, batch_size).argmax(dim=1) == y.cpu()).sum().item()
    return correct / x.shape[0]


def evaluate_model_file(model_path: str | os.PathLike[str], npz_path: str | os.PathLike[str], batch_size: int = 256) -> dict[str, float | int | str]:
    """What ``dfmscd evaluate`` prints: accuracy of a ``save_model`` file on a labelled ``.npz``."""
    from dfmscd.io import load_model

    module, card = load_model(model_path)
    x, y = read_labelled_npz(npz_path, card)
    return {"architecture": card.architecture, "n": int(x.shape[0]), "accuracy": evaluate(module, card, x, y, batch_size)}


__all__ = ["LabelledDataError", "evaluate", "evaluate_model_file", "predict", "read_labelled_npz", "to_model_input"]
