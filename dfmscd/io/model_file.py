"""Self-describing model files: safetensors weights with the model card in the metadata.

A student written by ``save_model`` can be served, evaluated or exported from that one file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from dfmscd import __version__
from dfmscd.errors import CardError, CheckpointError
from dfmscd.io import safetensors_file as st
from dfmscd.io.build import build_model, check_state_dict, instantiate, validate_card
from dfmscd.io.card import ModelCard, parse_card
from dfmscd.io.checkpoint import MAX_CHECKPOINT_BYTES, load_safetensors

CARD_METADATA_KEY = "dfmscd_card"


def save_model(module: nn.Module, card: ModelCard, path: str | os.PathLike[str]) -> Path:
    """Write ``module``'s weights and ``card`` atomically; refuses weights the card cannot rebuild."""
    validate_card(card)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    check_state_dict(instantiate(card).state_dict(), state, card.architecture)
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"cannot save: tensor {key!r} contains NaN or Inf values")
    path = Path(path)
    metadata = {CARD_METADATA_KEY: card.to_json(), "format": "pt", "dfmscd_version": __version__}
    st.write_atomic(path, state, metadata)
    return path


def read_model_card(path: str | os.PathLike[str], max_bytes: int = MAX_CHECKPOINT_BYTES) -> ModelCard:
    """The card stored in a model file's metadata, without loading the weights."""
    from dfmscd.io.checkpoint import header_metadata

    return _card_from_metadata(header_metadata(path, max_bytes), Path(path).name)


def _card_from_metadata(metadata: dict[str, str], label: str) -> ModelCard:
    text = metadata.get(CARD_METADATA_KEY)
    if text is None:
        raise CheckpointError(
            f"{label}: no model card in the safetensors metadata (not written by dfmscd); "
            "for a teacher, pass its model card (dfmscd evaluate FILE DATA --card teacher.json)"
        )
    try:
        return parse_card(text)
    except CardError as exc:
        raise CardError(f"{label}: {exc}") from None


def load_model(path: str | os.PathLike[str], max_bytes: int = MAX_CHECKPOINT_BYTES) -> tuple[nn.Module, ModelCard]:
    """Rebuild a model written by ``save_model``: ``(module in eval mode, card)``."""
    state, metadata = load_safetensors(path, max_bytes)
    card = validate_card(_card_from_metadata(metadata, Path(path).name))
    return build_model(card, state), card
