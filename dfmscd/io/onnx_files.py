"""ONNX files written by dfmscd (float ``.onnx`` and INT8 ``.int8.onnx``): their metadata and
running them in ONNX Runtime on the CPU.

onnxruntime is imported inside the functions, never at module top: the web API process must not
load it (tests/api/test_lean_api.py), and ``dfmscd.io`` imports this module lazily.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dfmscd.errors import CardError, CheckpointError
from dfmscd.io.card import ModelCard, parse_card

CARD_KEY = "dfmscd_card"
VERIFICATION_KEY = "dfmscd_verification"  # JSON: the figures of dfmscd.io.verify, per file
QUANTIZATION_KEY = "dfmscd_quantization"  # JSON: how an INT8 file was quantized and calibrated
MAX_ONNX_BYTES = 2 * 1024**3


def load_onnx_model(path: str | os.PathLike[str], max_bytes: int = MAX_ONNX_BYTES) -> Any:
    """The ``onnx.ModelProto`` of ``path``, refused with one line when it is too large, unreadable or
    keeps weights in external files (which could name any path on this machine)."""
    import onnx  # deferred on purpose: only ONNX files need it

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: file not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{path.name}: {size} bytes (limit {max_bytes})")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf parse errors come in many types
        raise CheckpointError(f"{path.name}: not a readable ONNX file ({_first_line(exc)})") from None
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise CheckpointError(f"{path.name}: weights in external data files are refused (tensor {tensor.name!r})")
    return model


def onnx_metadata_of(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def card_from_onnx_metadata(metadata: dict[str, str], label: str) -> ModelCard:
    text = metadata.get(CARD_KEY)
    if text is None:
        raise CardError(f"{label}: no dfmscd model card in the ONNX metadata (not a file written by dfmscd); "
                        "export it with dfmscd, or evaluate the safetensors file with --card")
    try:
        return parse_card(text)
    except CardError as exc:
        raise CardError(f"{label}: {exc}") from None


def read_onnx_card(path: str | os.PathLike[str], max_bytes: int = MAX_ONNX_BYTES) -> ModelCard:
    """The card a dfmscd ONNX file carries in its ``metadata_props``; ``CardError`` without one."""
    return card_from_onnx_metadata(onnx_metadata_of(load_onnx_model(path, max_bytes)), Path(path).name)


def set_onnx_metadata(model: Any, entries: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` by ``entries`` (in sorted key order, so the file is
    the same bytes for the same entries)."""
    del model.metadata_props[:]
    for key in sorted(entries):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, entries[key]


def ort_session(model: str | os.PathLike[str] | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; ``threads`` None: ONNX Runtime's default (one per core)."""
    import onnxruntime as ort  # deferred on purpose: never loaded by the web API process

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers on stderr
    if threads is not None:
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        label = "the model" if isinstance(model, bytes) else Path(model).name
        raise CheckpointError(f"{label}: ONNX Runtime cannot load it ({_first_line(exc)})") from None


def run_session(session: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of the session's first output for float32 ``x`` (N x C x H x W), in batches."""
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    parts = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, x.shape[0], batch_size)]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.empty((0, 0), np.float32)


def onnx_model_bytes(path: str | os.PathLike[str], max_bytes: int = MAX_ONNX_BYTES) -> tuple[bytes, dict[str, str]]:
    """The checked file's bytes (what a session is built from, so the file is read once) and its metadata."""
    model = load_onnx_model(path, max_bytes)
    return model.SerializeToString(), onnx_metadata_of(model)


def json_entry(metadata: dict[str, str], key: str) -> Any:
    """A JSON metadata entry, or None when absent or unreadable."""
    try:
        return json.loads(metadata[key])
    except (KeyError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


__all__ = [
    "CARD_KEY", "MAX_ONNX_BYTES", "QUANTIZATION_KEY", "VERIFICATION_KEY", "card_from_onnx_metadata", "json_entry",
    "load_onnx_model", "onnx_metadata_of", "onnx_model_bytes", "ort_session", "read_onnx_card", "run_session",
    "set_onnx_metadata",
]
