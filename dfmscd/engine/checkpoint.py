"""Run checkpoints: written atomically, read back as data only (``weights_only=True``).

A checkpoint holds only tensors and primitive containers (dicts, lists, numbers, strings), so
loading one can never run code. It carries a fingerprint of the run (config, budget, students,
teacher card and weights) so that resuming against a different setup fails loudly instead of
silently mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dfmscd.atomic import atomic_path
from dfmscd.config import DistillConfig
from dfmscd.errors import CheckpointError

FORMAT = "dfmscd-run-checkpoint/1"
# Fields that may differ between the interrupted and the resuming run without changing results.
_FINGERPRINT_EXCLUDED = ("checkpoint_every", "device", "pool_on_device")
# Fields at their default value are left out too: a field added in a later release (at a default
# that keeps the old behaviour) then leaves the fingerprint of a job queued before the upgrade
# unchanged, so that job still resumes from its checkpoint.
_DEFAULTS = DistillConfig().model_dump(mode="json")


def module_digest(module: nn.Module) -> str:
    """SHA-256 over a module's state (names, shapes, bytes): identifies the teacher."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_fingerprint(config: dict[str, Any], budget: dict[str, Any], students: list[dict], card: dict, teacher_digest: str) -> str:
    config = {k: v for k, v in config.items()
              if k not in _FINGERPRINT_EXCLUDED and (k not in _DEFAULTS or v != _DEFAULTS[k])}
    blob = json.dumps(
        {"config": config, "budget": budget, "students": students, "card": card, "teacher": teacher_digest},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """torch.save through ``dfmscd.atomic``: a resuming job never reads half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: str | Path, fingerprint: str) -> dict[str, Any]:
    """Read a checkpoint as data; CheckpointError if unreadable, foreign or from another run."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the user's bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read run checkpoint {path}: {reason[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dfmscd run checkpoint")
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"run checkpoint {path} was written for a different run (config, budget, students or "
            "teacher differ); remove it or choose another checkpoint path"
        )
    return state
