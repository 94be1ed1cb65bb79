"""Accuracy of a model on the user's labelled images, as ``dfmscd evaluate`` reports it: a labelled
``.npz`` (arrays ``x`` and ``y``) or a class-folder archive (``.tar``, ``.tar.gz``, ``.zip``:
``CLASS/IMAGE.png``, read by ``dfmscd.image_archive``). The model is a safetensors file written by
dfmscd, an ``.onnx`` or ``.int8.onnx`` file written by dfmscd (the card is in its metadata), or
weights with a separate card (a teacher). Evaluation data is only for reporting: nothing here
trains or calibrates anything on it.

An archive with a top-level ``test/`` folder is read from it (``test/CLASS/IMAGE``), any other
from its root. Archive labels follow the card's ``class_names`` when it has them (each folder must be one of
them); otherwise folders named by integers are those labels, and any other names are taken in
sorted order. Images must have the card's height and width (no resizing); grey images are
repeated to three channels and colour ones turned grey as the card asks.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dfmscd.errors import CardError, DfmscdError
from dfmscd.image_archive import ArchiveLimits, has_top_folder, is_archive, read_class_folders
from dfmscd.io.card import ModelCard

MAX_NPZ_BYTES = 2 * 1024**3  # declared uncompressed size of x and y together
# What one evaluation set may hold (dfmscd evaluate and the service alike): 200 MB of pixels read
# (the .npz's declared arrays, or the archive's members), 100,000 images.
EVALUATION_MAX_BYTES = 200 * 10**6
EVALUATION_MAX_IMAGES = 100_000
EVALUATION_SUBSET = "test"  # an archive with a top-level test/ folder is read from there (test/CLASS/IMAGE)
EVALUATION_LIMITS = ArchiveLimits(max_images=EVALUATION_MAX_IMAGES, max_total_bytes=EVALUATION_MAX_BYTES)
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
    """Accuracy of a model file dfmscd wrote (safetensors, .onnx, .int8.onnx) on a labelled ``.npz``
    or class-folder archive: ``{"architecture", "n", "accuracy"}``."""
    result = evaluate_file(model_path, npz_path, batch_size=batch_size)
    return {"architecture": result["architecture"], "n": result["n"], "accuracy": result["accuracy"]}


# --- evaluation sets: .npz or class-folder archives --------------------------------------------

def read_evaluation_set(path: str | os.PathLike[str], card: ModelCard,
                        limits: ArchiveLimits = EVALUATION_LIMITS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a labelled ``.npz`` or class-folder archive, normalised for ``card`` (see the
    module doc), within ``limits`` (bytes read, images)."""
    path = Path(path)
    if is_archive(path):
        return _read_archive(path, card, limits)
    if path.suffix.lower() != ".npz":
        raise LabelledDataError(f"{path.name}: evaluation data must be a .npz (x, y) or a class-folder archive "
                                "(.tar, .tar.gz, .tgz, .zip)")
    x, y = read_labelled_npz(path, card, max_bytes=limits.max_total_bytes)
    if x.shape[0] > limits.max_images:
        raise LabelledDataError(f"{path.name}: {x.shape[0]} images (limit {limits.max_images})")
    return x, y


def _read_archive(path: Path, card: ModelCard, limits: ArchiveLimits) -> tuple[torch.Tensor, torch.Tensor]:
    c, h, w = card.input_shape
    subset = EVALUATION_SUBSET if has_top_folder(path, EVALUATION_SUBSET, limits) else None
    images = read_class_folders(path, subset=subset, class_names=card.class_names, channels=c, limits=limits)
    got_h, got_w = images.x.shape[1:3]
    if (got_h, got_w) != (h, w):
        raise LabelledDataError(f"{path.name}: images are {got_w}x{got_h} pixels; the model card expects "
                                f"{c} x {h} x {w} (C x H x W), and images are not resized")
    y = images.y
    if card.class_names is None:
        folders = images.class_names
        if all(name.isdigit() for name in folders):  # folders named by label: 0/, 1/, ..., 10/
            y = np.array([int(folders[i]) for i in y], dtype=np.int64)
        elif len(folders) > card.num_classes:
            raise LabelledDataError(f"{path.name}: {len(folders)} class folders, but the model has "
                                    f"{card.num_classes} classes")
    nchw = np.ascontiguousarray(images.x.transpose(0, 3, 1, 2))
    return to_model_input(nchw, card, path.name), _labels(y, images.x.shape[0], card, path.name)


def describe_evaluation_set(path: str | os.PathLike[str], limits: ArchiveLimits = EVALUATION_LIMITS) -> dict[str, Any]:
    """What a labelled ``.npz`` or class-folder archive holds, read without a model card (the
    service checks an upload with it before any card is known; ``read_evaluation_set`` then checks
    it against a card). Every image is read, so an unsafe, unreadable or oversized set is refused
    here (``LabelledDataError`` / ``ImageArchiveError``, one line).

    ``{"kind": "npz", "images", "x_shape" (per image), "dtype", "labels": {"min", "max"}}`` or
    ``{"kind": "archive", "images", "image_size" [H, W], "channels", "classes" (folder names),
    "subset" ("test" or None), "labels": {"min", "max"}}``."""
    path = Path(path)
    if is_archive(path):
        subset = EVALUATION_SUBSET if has_top_folder(path, EVALUATION_SUBSET, limits) else None
        images = read_class_folders(path, subset=subset, channels=None, limits=limits)
        n, h, w, c = images.x.shape
        return {"kind": "archive", "images": int(n), "image_size": [int(h), int(w)], "channels": int(c),
                "classes": list(images.class_names), "subset": subset,
                "labels": {"min": int(images.y.min()), "max": int(images.y.max())}}
    if path.suffix.lower() != ".npz":
        raise LabelledDataError(f"{path.name}: evaluation data must be a .npz (x, y) or a class-folder archive "
                                "(.tar, .tar.gz, .tgz, .zip)")
    label = path.name
    _check_npz_container(path, label, limits.max_total_bytes)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise LabelledDataError(f"{label}: needs arrays 'x' and 'y', found {sorted(data.files)}")
            x, y = data["x"], data["y"]
    except LabelledDataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise LabelledDataError(f"{label}: unreadable .npz ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise LabelledDataError(f"{label}: x has dtype {x.dtype}; expected uint8 or float")
    if x.ndim not in (3, 4) or x.shape[0] == 0:
        raise LabelledDataError(f"{label}: x has shape {tuple(x.shape)}; expected N x C x H x W, N x H x W x C or "
                                "N x H x W with N >= 1")
    if x.shape[0] > limits.max_images:
        raise LabelledDataError(f"{label}: {x.shape[0]} images (limit {limits.max_images})")
    labels = _labels_any(y, x.shape[0], label)
    return {"kind": "npz", "images": int(x.shape[0]), "x_shape": [int(d) for d in x.shape[1:]], "dtype": str(x.dtype),
            "labels": {"min": int(labels.min()), "max": int(labels.max())}}


def _labels_any(y: np.ndarray, n: int, label: str) -> np.ndarray:
    """``_labels`` without a card: integer, one per image, not negative."""
    if not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
        raise LabelledDataError(f"{label}: y has dtype {y.dtype}; expected integer class indices")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or y.shape[0] != n:
        raise LabelledDataError(f"{label}: y has shape {tuple(y.shape)}; expected ({n},), one label per image")
    if int(y.min()) < 0:
        raise LabelledDataError(f"{label}: labels must be >= 0, found {int(y.min())}")
    return y


# --- model files: safetensors, ONNX, INT8 ONNX ---------------------------------------------------

@dataclass(frozen=True)
class LoadedModel:
    """A model file ready to predict: ``logits(x)`` takes normalised float32 N x C x H x W."""

    path: Path
    format: str  # "safetensors" | "onnx" | "onnx-int8" | "weights" (weights with a separate card)
    card: ModelCard
    logits: Callable[[torch.Tensor, int], torch.Tensor]


def load_for_evaluation(path: str | os.PathLike[str], card: ModelCard | None = None) -> LoadedModel:
    """A model to evaluate. ``card`` None: a file dfmscd wrote (safetensors, ``.onnx``, ``.int8.onnx``,
    the card in its metadata; ``CardError`` for an ONNX file without one); with ``card``: a weights
    file (safetensors or weights-only ``.pt``), e.g. a teacher."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if card is not None:
            raise CardError(f"{path.name}: an ONNX file written by dfmscd carries its own model card; drop --card")
        from dfmscd.io.onnx_files import (
            QUANTIZATION_KEY, card_from_onnx_metadata, onnx_model_bytes, ort_session, run_session,
        )

        data, metadata = onnx_model_bytes(path)
        onnx_card = card_from_onnx_metadata(metadata, path.name)
        session = ort_session(data)

        def onnx_logits(x: torch.Tensor, batch_size: int) -> torch.Tensor:
            return torch.from_numpy(run_session(session, x.numpy(), batch_size))

        fmt = "onnx-int8" if QUANTIZATION_KEY in metadata else "onnx"
        return LoadedModel(path, fmt, onnx_card, onnx_logits)
    if card is not None:
        from dfmscd.io import build_model, load_state_dict, validate_card

        card = validate_card(card)
        module, fmt = build_model(card, load_state_dict(path)), "weights"
    else:
        from dfmscd.io import load_model

        module, card = load_model(path)
        fmt = "safetensors"
    return LoadedModel(path, fmt, card, lambda x, batch_size: predict(module, x, batch_size))


def _accuracy(model: LoadedModel, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    logits = model.logits(x, batch_size)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0] or logits.shape[1] != model.card.num_classes:
        raise LabelledDataError(f"{model.path.name}: outputs of shape {tuple(logits.shape)}, expected "
                                f"({x.shape[0]}, {model.card.num_classes})")
    return float((logits.argmax(dim=1) == y).sum().item()) / x.shape[0]


def evaluate_file(model_path: str | os.PathLike[str], data_path: str | os.PathLike[str], card: ModelCard | None = None,
                  batch_size: int = 256, limits: ArchiveLimits = EVALUATION_LIMITS) -> dict[str, Any]:
    """What ``dfmscd evaluate MODEL DATA`` prints: ``{"model", "format", "architecture", "data", "n", "accuracy"}``."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    model = load_for_evaluation(model_path, card)
    x, y = read_evaluation_set(data_path, model.card, limits)
    return {"model": Path(model_path).name, "format": model.format, "architecture": model.card.architecture,
            "data": Path(data_path).name, "n": int(x.shape[0]), "accuracy": _accuracy(model, x, y, batch_size)}


def _data_key(card: ModelCard) -> tuple[Any, ...]:
    return (tuple(card.input_shape), tuple(card.mean), tuple(card.std), card.num_classes,
            tuple(card.class_names) if card.class_names else None)


def evaluate_models(models: Mapping[str, str | os.PathLike[str]], data_path: str | os.PathLike[str], *,
                    teacher: tuple[str | os.PathLike[str], ModelCard] | None = None, batch_size: int = 256,
                    limits: ArchiveLimits = EVALUATION_LIMITS) -> dict[str, Any]:
    """Accuracy of several model files dfmscd wrote (by label, e.g. ``"resnet8/onnx-int8"``) and,
    for comparison, of the teacher (``(weights path, card)``) on one evaluation set, read once per
    distinct card: ``{"data": {"file", "n"}, "models": {label: {"format", "architecture", "n",
    "accuracy"}}, "teacher": {...} | None}``. For reporting only: nothing is trained on the data."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    loaded = {label: load_for_evaluation(path) for label, path in models.items()}
    teacher_model = load_for_evaluation(teacher[0], teacher[1]) if teacher is not None else None
    sets: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def score(model: LoadedModel) -> dict[str, Any]:
        key = _data_key(model.card)
        if key not in sets:
            sets[key] = read_evaluation_set(data_path, model.card, limits)
        x, y = sets[key]
        return {"file": model.path.name, "format": model.format, "architecture": model.card.architecture,
                "n": int(x.shape[0]), "accuracy": _accuracy(model, x, y, batch_size)}

    results = {label: score(model) for label, model in loaded.items()}
    teacher_result = score(teacher_model) if teacher_model is not None else None
    n = next(iter(results.values()))["n"] if results else (teacher_result or {}).get("n")
    return {"data": {"file": Path(data_path).name, "n": n}, "models": results, "teacher": teacher_result}


__all__ = [
    "EVALUATION_LIMITS", "EVALUATION_MAX_BYTES", "EVALUATION_MAX_IMAGES", "LabelledDataError", "LoadedModel",
    "describe_evaluation_set", "evaluate",
    "evaluate_file", "evaluate_model_file", "evaluate_models", "load_for_evaluation", "predict", "read_evaluation_set",
    "read_labelled_npz", "to_model_input",
]
