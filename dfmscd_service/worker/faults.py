"""Test-only fault injection and pause points for the worker; both are off unless their
environment variable is set on the worker, and neither is ever set in production.

Why: the failure path of a job (a CUDA out-of-memory in the middle of a step) cannot be
produced on demand on a CPU-only test machine, yet it is the path that must free the job's
resources and leave the worker able to take the next job. And a test that kills, restarts or
cancels "while the job runs" must not depend on how fast the job runs: it holds the job at an
exact point instead. Both hooks are read only by ``dfmscd_service.worker.runner`` and are
enabled only from the worker's environment, never from a request, so a tenant cannot trigger
them: on a worker without the variable a hook is ``None`` and nothing about it is read.

Fault injection, ``DFMSCD_FAULT_INJECT``: ``oom_at_epoch:N`` raises
``torch.cuda.OutOfMemoryError`` from the first engine event of epoch ``N`` (or later) of every
job; ``oom_at_epoch:N:once`` fires for one job only per data directory (a marker file under
``DATA_DIR/fault-inject/`` records that it fired), so the same worker can then be shown to
complete the next job.

Pause point, ``DFMSCD_TEST_PAUSE_DIR=<dir>`` (a directory the test owns, shared by every worker
of the test that may run the job):

* a test selects a job by creating it with ``"metadata": {"dfmscd_test_pause_at_epoch": N}``
  (``PAUSE_METADATA_KEY``; an int >= 0; anything else fails the job, loudly). Only a worker
  started with the variable reads the key (a tenant's metadata is inert everywhere else), and
  a job without the key never pauses. The job is chosen by its metadata, not "the next job",
  because a test's worker may also run jobs other tests left queued in the same database;
* the job stops right after its first checkpoint at epoch >= N: the checkpoint file is saved
  and its ``checkpoint`` event recorded (so a resumed attempt restarts from epoch N), the
  lease heartbeat keeps running, and no step runs and no cancel poll happens while it waits.
  With ``budget.epochs == N`` this is the final checkpoint, before any result is written;
* it then writes ``<dir>/<job_id>.paused`` (atomically; JSON ``{"job_id", "epoch", "pid"}``, the
  pid of the process running the job) and waits until ``<dir>/<job_id>.release`` exists
  (checked every ``PAUSE_POLL_SECONDS``; no time limit), then goes on;
* once per job: an attempt that finds ``<job_id>.paused`` already there (a resumed attempt
  after the test killed the first) does not pause again.

``tests/worker/worker_kit.PausePoint`` is the test side (``wait_paused``, ``release``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ENV_VAR = "DFMSCD_FAULT_INJECT"
PAUSE_ENV_VAR = "DFMSCD_TEST_PAUSE_DIR"
PAUSE_METADATA_KEY = "dfmscd_test_pause_at_epoch"
PAUSE_POLL_SECONDS = 0.05

log = logging.getLogger("dfmscd.worker")


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


# ----------------------------------------------------------------------------- pause point
def paused_marker(pause_dir: Path, job_id: str) -> Path:
    """The file the hook writes once the job is held (see the module docstring)."""
    return Path(pause_dir) / f"{job_id}.paused"


def release_marker(pause_dir: Path, job_id: str) -> Path:
    """The file a test creates to let a held job go on."""
    return Path(pause_dir) / f"{job_id}.release"


def pause_epoch(metadata: Mapping[str, Any]) -> int | None:
    """The epoch a job asks to be held at, ``None`` without the key; ``ValueError`` when malformed."""
    if PAUSE_METADATA_KEY not in metadata:
        return None
    value = metadata[PAUSE_METADATA_KEY]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"metadata.{PAUSE_METADATA_KEY}={value!r}: expected an integer >= 0")
    return value


def pause_callback(job_id: str, metadata: Mapping[str, Any]) -> Callable[[Any], None] | None:
    """A Distiller callback that holds the job at its pause point, or ``None`` (always ``None``
    unless ``DFMSCD_TEST_PAUSE_DIR`` is set on the worker: inert in production)."""
    directory = os.environ.get(PAUSE_ENV_VAR)
    if not directory:
        return None
    epoch = pause_epoch(metadata)
    if epoch is None:
        return None
    paused, release = paused_marker(Path(directory), job_id), release_marker(Path(directory), job_id)
    if paused.exists():  # once per job: this is a later attempt
        return None

    def hold(event: Any) -> None:
        if event.kind != "checkpoint" or int(event.epoch) < epoch or paused.exists():
            return
        paused.parent.mkdir(parents=True, exist_ok=True)
        tmp = paused.with_name(paused.name + ".tmp")
        tmp.write_text(json.dumps({"job_id": job_id, "epoch": int(event.epoch), "pid": os.getpid()}))
        os.replace(tmp, paused)  # a test never reads half a marker
        log.warning("job %s: held by the test pause hook at epoch %s until %s exists", job_id, event.epoch, release.name)
        while not release.exists():
            time.sleep(PAUSE_POLL_SECONDS)  # the pause itself (test-only), not synchronisation by time
        log.warning("job %s: released by the test", job_id)

    return hold
