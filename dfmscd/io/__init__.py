"""Model cards, safe weight loading, self-describing model files and exports."""

from dfmscd.io.build import as_card, build_model, has_batchnorm, load_teacher, validate_card
from dfmscd.io.card import ModelCard, parse_card, read_card
from dfmscd.io.checkpoint import MAX_CHECKPOINT_BYTES, load_state_dict
from dfmscd.io.export import export_onnx, export_torchscript
from dfmscd.io.model_file import CARD_METADATA_KEY, load_model, read_model_card, save_model

__all__ = [
    "CARD_METADATA_KEY", "MAX_CHECKPOINT_BYTES", "ModelCard", "as_card", "build_model", "export_onnx",
    "export_torchscript", "has_batchnorm", "load_model", "load_state_dict", "load_teacher", "parse_card",
    "read_card", "read_model_card", "save_model", "validate_card",
]
