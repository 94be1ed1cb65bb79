"""Checks an uploaded teacher with the library before it is accepted into storage.

The card's JSON schema is checked here (pydantic only); everything that needs torch (does the
architecture exist, do the weights load and build, has it BatchNorm) runs in the torch pool
(``dfmscd_service.api.services.torch_pool``), with the same 422 codes and messages as in-process.
"""

from __future__ import annotations

from pathlib import Path

from dfmscd.errors import DfmscdError
from dfmscd.io.card import ModelCard, parse_card
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.services import torch_checks, torch_pool
from dfmscd_service.api.services.torch_checks import Refusal, TeacherValidation

SAFETENSORS, TORCH = "safetensors", "pt"


def refusal_error(refusal: Refusal) -> ApiError:
    return ApiError(422, refusal.code, refusal.message)


def parse_card_text(text: str | bytes) -> ModelCard:
    """Card JSON → ModelCard (schema only, no torch); 422 naming the problem otherwise."""
    try:
        return parse_card(text)
    except DfmscdError as exc:
        raise ApiError(422, "invalid_card", str(exc)) from None


async def check_card(text: str | bytes) -> ModelCard:
    """Card JSON → ModelCard with a known architecture; 422 naming the problem otherwise."""
    card = parse_card_text(text)
    refusal = await torch_pool.run(torch_checks.check_card, card.model_dump(mode="json", exclude_none=True))
    if refusal is not None:
        raise refusal_error(refusal)
    return card


def sniff_format(path: Path, filename: str | None) -> str:
    """safetensors starts with a little-endian u64 header length and then '{'."""
    with open(path, "rb") as fh:
        return sniff_head(fh.read(9), filename)


def sniff_head(head: bytes, filename: str | None) -> str:
    """``sniff_format`` from the file's first 9 bytes (an upload streamed to remote storage)."""
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return SAFETENSORS
    if filename and filename.lower().endswith(".safetensors"):
        return SAFETENSORS
    return TORCH


async def validate_teacher(path: Path, card: ModelCard, max_bytes: int,
                           display_name: str | None = None) -> TeacherValidation:
    """Load and build the teacher in the torch pool (weights-only, BN required): its card and
    warnings, or a 422 with the library's reason, naming the client's file (``display_name``)."""
    result = await torch_pool.run(torch_checks.check_teacher, str(path),
                                  card.model_dump(mode="json", exclude_none=True), max_bytes, display_name)
    if isinstance(result, Refusal):
        raise refusal_error(result)
    return result
