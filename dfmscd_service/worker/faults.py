"""Test-only fault injection for the worker, off unless ``DFMSCD_FAULT_INJECT`` is set.

Why: the failure path of a job (a CUDA out-of-memory in the middle of a step) cannot be
produced on demand on a CPU-only test machine, yet it is the path that must free the job's
resources and leave the worker able to take the next job. The hook is read only by
``dfmscd_service.worker.runner`` and only from the worker's environment, never from a request, so a tenant
cannot trigger it.

Syntax: ``oom_at_epoch:N`` raises ``torch.cuda.OutOfMemoryError`` from the first engine event
of epoch ``N`` (or later) of every job; ``oom_at_epoch:N:once`` fires for one job only per data
directory (a marker file under ``DATA_DIR/fault-inject/`` records that it fired), so the same
worker can then be shown to complete the next job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ENV_VAR = "DFMSCD_FAULT_INJECT"


@dataclass(frozen=True)
class FaultSpec:
    kind: str  # "oom_at_epoch"
    epoch: int
    once: bool


def parse_fault(text: str | None) -> FaultSpec | None:
    """``None`` when unset/empty; ``ValueError`` on a malformed spec (the worker must not guess)."""
    if not text:
        return None
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or parts[0] != "oom_at_epoch" or (len(parts) == 3 and parts[2] != "once"):
        raise ValueError(f"{ENV_VAR}={text!r}: expected 'oom_at_epoch:N' or 'oom_at_epoch:N:once'")
    try:
        epoch = int(parts[1])
    except ValueError:
        raise ValueError(f"{ENV_VAR}={text!r}: N must be an integer") from None
    if epoch < 0:
        raise ValueError(f"{ENV_VAR}={text!r}: N must be >= 0")
    return FaultSpec(parts[0], epoch, len(parts) == 3)


def fault_callback(job_id: str, data_dir: Path) -> Callable[[Any], None] | None:
    """A Distiller callback that raises the configured fault, or ``None`` when none is configured."""
    spec = parse_fault(os.environ.get(ENV_VAR))
    if spec is None:
        return None
    marker = data_dir / "fault-inject" / f"{spec.kind}-{spec.epoch}.fired"
    if spec.once and marker.exists():
        return None

    def inject(event: Any) -> None:
        if int(event.epoch) < spec.epoch:
            return
        if spec.once:
            marker.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # one job wins the shot
            except FileExistsError:
                return
            os.write(fd, job_id.encode())
            os.close(fd)
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory (injected by {ENV_VAR} at epoch {event.epoch}). Tried to allocate 2.00 GiB"
        )

    return inject
