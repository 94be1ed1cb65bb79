"""INT8 exports of *our* students: ONNX Runtime static quantization, calibrated on images.

The student is exported to float ONNX, pre-processed (ONNX Runtime's shape inference and graph
optimisation, ``quant_pre_process``), then ``quantize_static`` inserts QuantizeLinear /
DequantizeLinear pairs (QDQ format) with

- weights ``QInt8``, per output channel, with ``reduce_range`` (7-bit weights);
- activations ``QUInt8`` (asymmetric), ranges from MinMax calibration.

Why these types: ONNX Runtime's CPU kernels multiply u8 activations by s8 weights; on an x86 CPU
without VNNI (AVX2 only, as the machine these defaults were measured on, and AVX-512 without
VNNI) the instruction that does it (``vpmaddubsw``) adds pairs of products into 16 bits and
saturates when both operands use their full range; 7-bit weights (``reduce_range``) make that
impossible, for a fraction of a bit of weight precision. ONNX Runtime's own guidance for non-VNNI
x86 is exactly this (U8S8, reduce_range); on a VNNI or ARM CPU the same file runs correctly, only
with one weight bit to spare. A fixed choice (not one picked from the exporting machine's flags)
keeps the file the same wherever it is made. docs/deploy.md has the figures.

Calibration is deterministic: the images are fed in their given order in fixed batches, MinMax
takes the min and max over all of them (independent of batching and threads), and the file is
written with its metadata in a fixed order; the same student and the same images give the same
bytes (tests/dfmscd/test_deploy.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dfmscd.atomic import atomic_path
from dfmscd.errors import ExportError
from dfmscd.io.card import ModelCard
from dfmscd.io.onnx_files import QUANTIZATION_KEY, set_onnx_metadata

INT8_FORMAT = "onnx-int8"


@dataclass(frozen=True)
class Int8Settings:
    """How an INT8 file is made; written into its metadata (``dfmscd_quantization``)."""

    activation_type: str = "QUInt8"  # QUInt8 | QInt8
    weight_type: str = "QInt8"  # QInt8 | QUInt8
    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no u8 x s8 saturation on AVX2 / non-VNNI AVX-512
    calibrate_method: str = "MinMax"  # MinMax | Entropy | Percentile
    batch_size: int = 64  # images per calibration batch (the result does not depend on it for MinMax)
    max_images: int = 1024  # the first images of the calibration set are used, in order
    preprocess: bool = True  # onnxruntime.quantization.shape_inference.quant_pre_process first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def images_array(images: torch.Tensor | np.ndarray, card: ModelCard, what: str = "images") -> np.ndarray:
    """uint8 N x C x H x W pixels (the engine's calibration and hold-out sets) as the model input:
    float32, scaled to [0, 1] and normalised with the card's mean/std."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8:
        raise ExportError(f"{what} must be uint8 pixels (N x C x H x W), got dtype {array.dtype}")
    c, h, w = card.input_shape
    if array.ndim != 4 or tuple(array.shape[1:]) != (c, h, w):
        raise ExportError(f"{what} have shape {tuple(array.shape)}; the model card expects N x {c} x {h} x {w}")
    mean = np.asarray(card.mean, dtype=np.float32).reshape(1, c, 1, 1)
    std = np.asarray(card.std, dtype=np.float32).reshape(1, c, 1, 1)
    return ((array.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)


def pixels_sha256(images: torch.Tensor | np.ndarray) -> str:
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    digest = hashlib.sha256(str(tuple(array.shape)).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _reader(x: np.ndarray, input_name: str, batch_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader  # deferred on purpose: never in the web API

    class ArrayReader(CalibrationDataReader):
        """The calibration images in their order, ``batch_size`` at a time."""

        def __init__(self) -> None:
            self.position = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= x.shape[0]:
                return None
            batch = x[self.position:self.position + batch_size]
            self.position += batch_size
            return {input_name: batch}

        def rewind(self) -> None:
            self.position = 0

        def __len__(self) -> int:
            return x.shape[0]

    return ArrayReader()


def quantize_onnx_file(src: Path, dest: Path, x: np.ndarray, settings: Int8Settings) -> None:
    """Static QDQ quantization of the float ONNX file ``src`` into ``dest``, calibrated on ``x``
    (normalised float32 model inputs). Raises whatever ONNX Runtime raises."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # deferred on purpose
    from onnxruntime.quantization.shape_inference import quant_pre_process  # deferred on purpose

    work = Path(src)
    if settings.preprocess:
        work = dest.with_name(dest.stem + ".pre.onnx")
        quant_pre_process(str(src), str(work), skip_symbolic_shape=False)
    ort_logger = logging.getLogger()  # quantize_static logs its "consider pre-processing" hints at WARNING
    level = ort_logger.level
    ort_logger.setLevel(max(level, logging.ERROR))
    try:
        quantize_static(
            str(work), str(dest), _reader(x, "input", settings.batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=getattr(QuantType, settings.activation_type),
            weight_type=getattr(QuantType, settings.weight_type),
            calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
        )
    finally:
        ort_logger.setLevel(level)


def export_onnx_int8(module: nn.Module, card: ModelCard, path: str | os.PathLike[str],
                     calibration: torch.Tensor | np.ndarray, settings: Int8Settings | None = None,
                     metadata: dict[str, str] | None = None) -> Path:
    """INT8 ONNX (QDQ) of ``module`` at ``path``, calibrated on ``calibration`` (uint8 N x C x H x W
    pixels, e.g. ``DistillResult.calibration``); the card, mean/std and the quantization settings
    go into ``metadata_props``, with ``metadata`` added. ``ExportError`` names the format and why."""
    import onnx  # deferred on purpose: only ONNX exports need it
    import onnxruntime  # deferred on purpose: never in the web API

    from dfmscd.io.export import export_onnx, onnx_metadata

    settings = settings or Int8Settings()
    label = f"{INT8_FORMAT} export of {card.architecture!r}"
    if settings.max_images < 1 or settings.batch_size < 1:
        raise ExportError(f"{label}: max_images and batch_size must be >= 1")
    images = calibration[:settings.max_images]
    if len(images) == 0:
        raise ExportError(f"{label} needs calibration images (uint8 N x C x H x W); none were given")
    x = images_array(images, card, "calibration images")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="dfmscd-int8-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        int8_path = Path(tmp) / "int8.onnx"
        try:
            export_onnx(module, card, float_path)
        except ExportError as exc:  # the float export's own reason, under this format's name
            reason = str(exc).removeprefix(f"onnx export of {card.architecture!r} failed: ")
            raise ExportError(f"{label} failed: {reason}") from None
        try:
            quantize_onnx_file(float_path, int8_path, x, settings)
            model = onnx.load(str(int8_path))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's quantizer raises many types
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{label} failed in ONNX Runtime's quantizer: {text[:300]}") from None
    quantization = {**settings.to_dict(), "format": "QDQ", "calibration_images": int(x.shape[0]),
                    "calibration_sha256": pixels_sha256(images), "onnxruntime": onnxruntime.__version__}
    set_onnx_metadata(model, {**onnx_metadata(card), QUANTIZATION_KEY: json.dumps(quantization, sort_keys=True),
                              **(metadata or {})})
    with atomic_path(path) as tmp_path:
        onnx.save(model, str(tmp_path))
    return path


__all__ = ["INT8_FORMAT", "Int8Settings", "export_onnx_int8", "images_array", "pixels_sha256", "quantize_onnx_file"]
