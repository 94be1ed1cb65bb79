"""Verification of every exported file: run the file as a deployment would (ONNX and INT8 in ONNX
Runtime on the CPU, TorchScript with ``torch.jit.load``, safetensors rebuilt with ``load_model``)
on held-out images and compare it with the PyTorch student it came from.

Only files dfmscd has just written are loaded here (never a user's TorchScript).

Figures: ``top1_agreement`` (the share of images where the file's top-1 class is the student's),
``max_abs_logit_diff`` and ``logit_scale`` (the largest |logit| of the student, to read the
difference against). Thresholds:

- a float file (safetensors, onnx, torchscript) must agree on at least 99.9 % of the images,
  counting as agreement the float ties (images where the student's own logits for the two classes
  differ by less than ``TIE_TOLERANCE`` of the logit scale, which rounding may flip); below that
  the export is a bug and is refused (``ExportError``);
- an INT8 file below 97 % is served but flagged (``status: "flagged"``, with its figure).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dfmscd.errors import ExportError
from dfmscd.io.card import ModelCard

FLOAT_FORMATS = ("safetensors", "onnx", "torchscript")
INT8_FORMATS = ("onnx-int8",)
FLOAT_MIN_AGREEMENT = 0.999
INT8_MIN_AGREEMENT = 0.97
TIE_TOLERANCE = 1e-4  # of the logit scale: float rounding may flip a top-1 this close
MAX_VERIFY_IMAGES = 1024
RANDOM_IMAGES = 256  # when a run left neither hold-out nor calibration images (e.g. cancelled very early)


@dataclass(frozen=True)
class Verification:
    """How one exported file compares with the PyTorch student, on ``images`` held-out images."""

    format: str
    images: int
    images_source: str  # "holdout" | "calibration" | "random"
    top1_agreement: float
    max_abs_logit_diff: float
    logit_scale: float
    ties: int  # disagreements that are float ties (see the module doc); counted as agreement for float files
    min_agreement: float  # the threshold this format is held to
    status: str  # "verified" | "flagged" (INT8 below its threshold) | "refused" (float below its threshold)

    @property
    def message(self) -> str:
        pct = f"{self.top1_agreement * 100:.2f}%"
        if self.status == "verified":
            return f"{self.format}: top-1 agreement with the PyTorch student {pct} on {self.images} {self.images_source} images"
        if self.status == "flagged":
            return (f"{self.format}: top-1 agreement with the PyTorch student is {pct} on {self.images} "
                    f"{self.images_source} images, below {self.min_agreement * 100:.0f}%; the file is kept but flagged")
        return (f"{self.format} export refused: its top-1 agreement with the PyTorch student is {pct} on {self.images} "
                f"{self.images_source} images (a float export must reach {self.min_agreement * 100:.1f}%; "
                f"largest logit difference {self.max_abs_logit_diff:.4g}); this is a bug in the export")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; floats to 6 significant digits (a file's stamped figures do not carry float
        noise), a non-finite difference as None."""
        out: dict[str, Any] = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = float(f"{value:.6g}") if math.isfinite(value) else None
        return {**out, "message": self.message}


def min_agreement(fmt: str) -> float:
    if fmt in INT8_FORMATS:
        return INT8_MIN_AGREEMENT
    if fmt in FLOAT_FORMATS:
        return FLOAT_MIN_AGREEMENT
    raise ValueError(f"unknown format {fmt!r}")


def compare_logits(fmt: str, reference: np.ndarray, exported: np.ndarray, images_source: str = "holdout") -> Verification:
    """The figures and the verdict for one file, from the student's and the file's logits (N x K)."""
    reference = np.asarray(reference, dtype=np.float64)
    exported = np.asarray(exported, dtype=np.float64)
    if exported.shape != reference.shape or reference.ndim != 2 or reference.shape[0] == 0:
        raise ExportError(f"{fmt} export gives outputs of shape {tuple(exported.shape)} where the student gives "
                          f"{tuple(reference.shape)}")
    n = reference.shape[0]
    if not np.isfinite(exported).all():
        diff, scale = float("inf"), float(np.abs(reference).max())
    else:
        diff, scale = float(np.abs(exported - reference).max()), float(np.abs(reference).max())
    ref_top, exp_top = reference.argmax(axis=1), exported.argmax(axis=1)
    wrong = np.nonzero(ref_top != exp_top)[0]
    margins = reference[wrong, ref_top[wrong]] - reference[wrong, exp_top[wrong]]
    ties = int((margins <= TIE_TOLERANCE * max(1.0, scale)).sum()) if np.isfinite(diff) else 0
    agreement = (n - wrong.size) / n
    threshold = min_agreement(fmt)
    if fmt in INT8_FORMATS:
        status = "verified" if agreement >= threshold else "flagged"
    else:
        status = "verified" if (n - wrong.size + ties) / n >= threshold else "refused"
    return Verification(fmt, n, images_source, agreement, diff, scale, ties, threshold, status)


def verification_images(holdout: Any = None, calibration: Any = None, card: ModelCard | None = None,
                        limit: int = MAX_VERIFY_IMAGES) -> tuple[np.ndarray, str]:
    """uint8 N x C x H x W images to verify on, and where they come from: the hold-out set (images
    no student trained on and not in the calibration sample), else the calibration sample (a run
    cancelled before its hold-out round), else random pixels from a fixed seed (needs ``card``)."""
    for images, source in ((holdout, "holdout"), (calibration, "calibration")):
        if images is not None and len(images) > 0:
            array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
            return array[:limit], source
    if card is None:
        raise ExportError("no images to verify an export on (no hold-out or calibration images, and no card)")
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(RANDOM_IMAGES, *card.input_shape), dtype=np.uint8), "random"


@torch.no_grad()
def student_logits(module: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The PyTorch student's logits for normalised ``x``, on the CPU in float32, eval mode (restored)."""
    from dfmscd.evaluate import predict

    model = module
    if any(p.device.type != "cpu" for p in module.parameters()):
        import copy

        model = copy.deepcopy(module).to("cpu")
    return predict(model, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), batch_size).numpy()


def file_logits(fmt: str, path: str | os.PathLike[str], x: np.ndarray, batch_size: int = 256,
                threads: int | None = None) -> np.ndarray:
    """Run an exported file on normalised ``x`` as a deployment would. Only for files dfmscd wrote."""
    path = Path(path)
    if fmt in ("onnx", "onnx-int8"):
        from dfmscd.io.onnx_files import ort_session, run_session

        return run_session(ort_session(path, threads), x, batch_size)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            model = torch.jit.load(str(path), map_location="cpu")  # our own export, just written
        return student_logits(model, x, batch_size)
    if fmt == "safetensors":
        from dfmscd.io.model_file import load_model

        model, _ = load_model(path)
        return student_logits(model, x, batch_size)
    raise ValueError(f"unknown format {fmt!r}")


def verify_file(fmt: str, path: str | os.PathLike[str], module: nn.Module, card: ModelCard, images: Any,
                images_source: str = "holdout", refuse: bool = True) -> Verification:
    """Compare the file at ``path`` (format ``fmt``) with ``module`` on ``images`` (uint8 N x C x H x W).
    ``refuse``: a float file below its threshold raises ``ExportError`` (with the figures)."""
    from dfmscd.io.quantize import images_array

    x = images_array(images, card, "verification images")
    try:
        exported = file_logits(fmt, path, x)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a file that does not even run is refused, whatever the runtime raised
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{fmt} export of {card.architecture!r} does not run: {text}") from None
    result = compare_logits(fmt, student_logits(module, x), exported, images_source)
    if refuse and result.status == "refused":
        raise ExportError(result.message)
    return result


__all__ = [
    "FLOAT_FORMATS", "FLOAT_MIN_AGREEMENT", "INT8_FORMATS", "INT8_MIN_AGREEMENT", "MAX_VERIFY_IMAGES", "TIE_TOLERANCE",
    "Verification", "compare_logits", "file_logits", "min_agreement", "student_logits", "verification_images",
    "verify_file",
]
