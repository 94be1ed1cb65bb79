"""Checks an uploaded teacher with the library before it is accepted into storage."""

from __future__ import annotations

from pathlib import Path

from app.errors import ApiError
from dfmscd.errors import CardError, CheckpointError, DfmscdError
from dfmscd.io.card import ModelCard, parse_card

SAFETENSORS, TORCH = "safetensors", "pt"


def check_card(text: str | bytes) -> ModelCard:
    """Card JSON → ModelCard with a known architecture; 422 naming the problem otherwise."""
    from dfmscd.io import validate_card

    try:
        card = parse_card(text)
        validate_card(card)
    except DfmscdError as exc:
        raise ApiError(422, "invalid_card", str(exc)) from None
    return card


def sniff_format(path: Path, filename: str | None) -> str:
    """safetensors starts with a little-endian u64 header length and then '{'."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return SAFETENSORS
    if filename and filename.lower().endswith(".safetensors"):
        return SAFETENSORS
    return TORCH


def check_teacher(path: Path, card: ModelCard, max_bytes: int) -> None:
    """Load and build the teacher (weights-only, BN required); 422 with the library's reason."""
    from dfmscd.io import load_teacher

    try:
        load_teacher(path, card, max_bytes=max_bytes)
    except CardError as exc:
        raise ApiError(422, "invalid_card", str(exc)) from None
    except CheckpointError as exc:
        raise ApiError(422, "invalid_checkpoint", str(exc)) from None
    except DfmscdError as exc:
        raise ApiError(422, "invalid_teacher", str(exc)) from None
