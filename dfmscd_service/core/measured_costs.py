"""Costs the workers measured, kept so the API can say what a seconds budget buys before a job runs.

A run with a seconds budget times its work at its first start (the engine's ``sizing`` event):
each student's KD step, the teacher's forward pass, and at the synthesis batch the teacher, each
frozen student and one generator. The worker stores each figure here under (device, role,
architecture, input shape), replacing the previous one; the API reads the latest figures for a
new job's architectures on the device it will run on (``api/services/job_advice.py``). In core
because the worker writes the table and the API reads it, and neither may import the other.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dfmscd_service.core.models import MeasuredCost, utcnow

# role -> (the key of ``measured_ms`` in the sizing event, the batch it was measured at)
ROLES = ("kd", "synthesis", "teacher_forward", "synthesis_teacher", "synthesis_generator")
KD_BATCH_ROLES = ("kd", "teacher_forward")  # the others are measured at the synthesis batch
_MAX_KEY = 255
_DEVICE_IN_MESSAGE = re.compile(r"^on (.+?) this budget buys")


@dataclass(frozen=True)
class Figure:
    role: str
    architecture: str
    batch_size: int
    ms: float


def device_kind(device: str) -> str:
    """"cuda" for a GPU label ("cuda:0 (NVIDIA H100 ...)"), else "cpu"."""
    return "cuda" if device.startswith("cuda") else "cpu"


def shape_key(input_shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in input_shape)


def architecture_key(architecture: str, arch_kwargs: Mapping[str, Any] | None = None) -> str:
    """The architecture, with its keyword arguments when it has any (they change its cost)."""
    key = architecture if not arch_kwargs else f"{architecture} {json.dumps(arch_kwargs, sort_keys=True, separators=(',', ':'))}"
    if len(key) > _MAX_KEY:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        key = f"{key[:_MAX_KEY - 18]}#{digest}"
    return key


def generator_key(config: Mapping[str, Any]) -> str:
    """The generator of a run's (effective) config: its cost follows its width and latent size."""
    return f"generator:{int(config['generator_width'])}x{int(config['latent_dim'])}"


def device_of(data: Mapping[str, Any]) -> str | None:
    """The device a ``sizing`` event was measured on: its ``device``, else the one its message names."""
    device = data.get("device")
    if isinstance(device, str) and device:
        return device[:_MAX_KEY]
    match = _DEVICE_IN_MESSAGE.match(str(data.get("message") or ""))
    return match.group(1)[:_MAX_KEY] if match else None


def figures_from_sizing(data: Mapping[str, Any], students: Mapping[str, str], teacher: str) -> list[Figure]:
    """The figures of one ``sizing`` event; ``students`` maps each student's name to its architecture
    key, ``teacher`` is the teacher's. Figures of unknown students or with no positive time are skipped."""
    measured = data.get("measured_ms") or {}
    config = data.get("config") or {}
    kd_batch, synth_batch = measured.get("kd_batch_size"), measured.get("synth_batch_size")
    out: list[Figure] = []

    def add(role: str, architecture: str, batch: Any, ms: Any) -> None:
        if isinstance(batch, int) and batch > 0 and isinstance(ms, (int, float)) and ms > 0:
            out.append(Figure(role, architecture, batch, float(ms)))

    for role, key in (("kd", "kd"), ("synthesis", "synthesis")):
        for name, ms in (measured.get(key) or {}).items():
            if name in students:
                add(role, students[name], kd_batch if role == "kd" else synth_batch, ms)
    add("teacher_forward", teacher, kd_batch, measured.get("teacher_forward"))
    add("synthesis_teacher", teacher, synth_batch, measured.get("synthesis_teacher"))
    if "generator_width" in config and "latent_dim" in config:
        add("synthesis_generator", generator_key(config), synth_batch, measured.get("synthesis_generator"))
    return out


def record_figures(session: Session, device: str, input_shape: Sequence[int], figures: Iterable[Figure],
                   job_id: str | None = None, at: datetime | None = None) -> int:
    """Upsert the figures (the latest replaces the previous one of its key); the caller commits."""
    at = at or utcnow()
    latest = {(f.role, f.architecture): f for f in figures}  # one row per key: a statement may not upsert one twice
    rows = [dict(device=device, device_kind=device_kind(device), role=f.role, architecture=f.architecture,
                 input_shape=shape_key(input_shape), batch_size=f.batch_size, ms=f.ms, measured_at=at, job_id=job_id)
            for f in latest.values()]
    if not rows:
        return 0
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(MeasuredCost).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=["device", "role", "architecture", "input_shape"],
        set_={k: stmt.excluded[k] for k in ("device_kind", "batch_size", "ms", "measured_at", "job_id")},
    )
    session.execute(stmt)
    return len(rows)


@dataclass(frozen=True)
class Found:
    """The latest figures for what was asked, on the one device that has all of them (most recent
    first), or which ones no device has."""

    device: str | None
    measured_at: datetime | None
    figures: dict[tuple[str, str], MeasuredCost]
    missing: list[tuple[str, str]]


def latest_figures(session: Session, kind: str, input_shape: Sequence[int], wanted: Iterable[tuple[str, str]]) -> Found:
    """Of the devices of ``kind`` ("cpu"/"cuda") that measured every (role, architecture) of ``wanted``
    at this input shape, the one measured most recently; else what the best-covered device lacks."""
    wanted = sorted(set(wanted))
    archs = sorted({a for _, a in wanted})
    rows = session.scalars(select(MeasuredCost).where(
        MeasuredCost.device_kind == kind, MeasuredCost.input_shape == shape_key(input_shape),
        MeasuredCost.architecture.in_(archs))).all()
    by_device: dict[str, dict[tuple[str, str], MeasuredCost]] = {}
    for row in rows:
        if (row.role, row.architecture) in wanted:
            by_device.setdefault(row.device, {})[(row.role, row.architecture)] = row
    complete = [(max(r.measured_at for r in got.values()), device) for device, got in by_device.items()
                if len(got) == len(wanted)]
    if complete:
        at, device = max(complete)
        return Found(device, at, by_device[device], [])
    if not by_device:
        return Found(None, None, {}, wanted)
    device = max(by_device, key=lambda d: (len(by_device[d]), max(r.measured_at for r in by_device[d].values())))
    return Found(device, None, by_device[device], [w for w in wanted if w not in by_device[device]])


def advice_view(advice: Mapping[str, Any] | None, *, basis: str, device: str | None, measured_at: datetime | None,
                message: str, missing: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """A job's ``advice`` as clients see it (one shape for the API's estimate and the run's own).

    ``basis``: "history" (figures earlier runs measured on this kind of device), "run" (this run's
    first start) or "unmeasured" (no device has measured every architecture of the job yet)."""
    when = measured_at.isoformat() if measured_at is not None else None
    if basis == "run":
        source = f"measured at the start of this run on {device}"
    elif basis == "history":
        source = f"measured on {device} at {when}"
    else:
        source = None
    out: dict[str, Any] = {"basis": basis, "source": source, "device": device, "measured_at": when, "message": message,
                           "below_floor": False}
    if advice:
        out.update({k: advice[k] for k in ("epochs", "warmup_epochs", "kd_steps_per_epoch", "kd_updates", "min_kd_updates",
                                           "synthesis_share", "warmup_share", "min_budget_s", "below_floor") if k in advice})
    if missing:
        out["missing"] = [f"{role} {arch}" for role, arch in missing]
    return out


def merge_warnings(current: Sequence[str] | None, added: Iterable[str], dropped: Iterable[str] = ()) -> list[str] | None:
    """``current`` without ``dropped``, then each of ``added`` not already there (None when empty)."""
    gone = set(dropped)
    out = [w for w in (current or []) if w not in gone]
    for w in added:
        if isinstance(w, str) and w and w not in out:
            out.append(w)
    return out or None


__all__ = ["Figure", "Found", "KD_BATCH_ROLES", "ROLES", "advice_view", "architecture_key", "device_kind", "device_of",
           "figures_from_sizing", "generator_key", "latest_figures", "merge_warnings", "record_figures", "shape_key"]
