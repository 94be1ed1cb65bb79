"""Model cards, safe weight loading, self-describing model files and exports.

The card (``dfmscd.io.card``) needs only pydantic; everything else needs torch. The torch parts
are imported on first use of their names (PEP 562), so that reading a card — the web API does,
and must not load torch — costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

from dfmscd.io.card import ModelCard, parse_card, read_card

_LAZY = {  # name -> module that defines it (imports torch)
    "as_card": "build", "build_model": "build", "has_batchnorm": "build", "load_teacher": "build",
    "validate_card": "build", "MAX_CHECKPOINT_BYTES": "checkpoint", "load_state_dict": "checkpoint",
    "export_as": "export", "export_onnx": "export", "export_torchscript": "export", "CARD_METADATA_KEY": "model_file",
    "load_model": "model_file", "read_model_card": "model_file", "save_model": "model_file",
    "export_onnx_int8": "quantize", "Int8Settings": "quantize", "read_onnx_card": "onnx_files",
    "verify_file": "verify", "Verification": "verify",
}

__all__ = [
    "CARD_METADATA_KEY", "Int8Settings", "MAX_CHECKPOINT_BYTES", "ModelCard", "Verification", "as_card", "build_model",
    "export_as", "export_onnx", "export_onnx_int8", "export_torchscript", "has_batchnorm", "load_model",
    "load_state_dict", "load_teacher", "parse_card", "read_card", "read_model_card", "read_onnx_card", "save_model",
    "validate_card", "verify_file",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dfmscd.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dfmscd.io.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
