"""Checks an uploaded teacher with the library before it is accepted into storage."""

from __future__ import annotations

from pathlib import Path

from dfmscd_service.api.errors import ApiError
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


def check_teacher(path: Path, card: ModelCard, max_bytes: int, display_name: str | None = None) -> None:
    """Load and build the teacher (weights-only, BN required); 422 with the library's reason.

    The library names the file it read, here the server's temp file: its name is replaced by
    ``display_name`` (the client's file name) so that the message speaks of the user's file.
    """
    from dfmscd.io import load_teacher

    try:
        load_teacher(path, card, max_bytes=max_bytes)
    except CardError as exc:
        raise ApiError(422, "invalid_card", _relabel(str(exc), path, display_name)) from None
    except CheckpointError as exc:
        raise ApiError(422, "invalid_checkpoint", _relabel(str(exc), path, display_name)) from None
    except DfmscdError as exc:
        raise ApiError(422, "invalid_teacher", _relabel(str(exc), path, display_name)) from None


def _relabel(message: str, path: Path, display_name: str | None) -> str:
    return message.replace(path.name, display_name or "weights file")
