"""What a seconds budget buys, told when the job is created, from the costs earlier runs measured.

The engine measures its costs when a run starts and sizes the run from them (``dfmscd.sizing``);
the workers keep those figures (``core.measured_costs``). Here the same planning runs on the
latest figures for the job's teacher, students and generator at the teacher's input shape, so a
budget too small for the students is reported before the job waits in the queue. The run's own
measurement later replaces this estimate (``worker/recorder.py``). Pure Python: no torch here.

Which device the job will run on: ``device: cpu`` or ``cuda[:N]`` as asked; ``auto`` is CUDA
when the workers have GPUs (``WORKER_GPUS`` > 0) and the latest figures any worker measured came
from a GPU, else the CPU. Between devices of that kind (other CPU models, thread counts, GPUs),
the one that measured all the job's figures most recently is used, and the advice names it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dfmscd import sizing
from dfmscd.costs import kd_rates
from dfmscd.io.card import ModelCard
from dfmscd_service.api.services.job_requests import JobPlan
from dfmscd_service.core.measured_costs import (
    KD_BATCH_ROLES,
    advice_view,
    architecture_key,
    generator_key,
    latest_figures,
    shape_key,
)
from dfmscd_service.core.models import MeasuredCost
from dfmscd_service.core.settings import Settings

# Time no epoch gets besides the warm-up's first synthesis round: the held-out evaluation (as the
# engine counts it). Set-up time is unknown before a run, so this estimate leaves it out.
EVALUATION_S = 0.25


def device_kind_for(session: Session, device: str, settings: Settings) -> str:
    """"cuda" or "cpu": where a job with this ``device`` setting is expected to run."""
    if device.startswith("cuda"):
        return "cuda"
    if device == "cpu" or settings.worker_gpus == 0:
        return "cpu"
    latest = session.scalar(select(MeasuredCost.device_kind).order_by(MeasuredCost.measured_at.desc()).limit(1))
    return latest or "cpu"


def budget_advice(session: Session, plan: JobPlan, card: ModelCard, settings: Settings) -> dict[str, Any] | None:
    """The job's ``advice`` (``core.measured_costs.advice_view``), None without a seconds budget."""
    seconds = plan.budget.seconds
    if seconds is None:
        return None
    kind = device_kind_for(session, plan.config.device, settings)
    cuda = kind == "cuda"
    intent = plan.config.model_dump(mode="json")
    names = [s.name for s in plan.students]
    shape = tuple(card.input_shape)
    effective = {**intent, **sizing.plan_run(intent, shape, card.num_classes, cuda, None, None, names).values}
    teacher = architecture_key(card.architecture, card.arch_kwargs)
    students = [architecture_key(s.architecture, s.arch_kwargs) for s in plan.students]
    generator = generator_key(effective)
    wanted = ({("kd", a) for a in students} | {("synthesis", a) for a in students}
              | {("teacher_forward", teacher), ("synthesis_teacher", teacher), ("synthesis_generator", generator)})
    found = latest_figures(session, kind, shape, wanted)
    if found.missing:
        where = found.device or ("the workers' GPU" if cuda else "the workers' CPU")
        missing = ", ".join(sorted({arch for _, arch in found.missing}))
        message = (f"{where} is not yet measured for these architectures at {shape_key(shape)} ({missing}); "
                   "the run measures them when it starts and says then what this budget buys")
        return advice_view(None, basis="unmeasured", device=found.device, measured_at=None, message=message,
                           missing=found.missing)

    kd_batch, synth_batch = int(effective["kd_batch_size"]), int(effective["synth_batch_size"])

    def ms(role: str, architecture: str) -> float:
        """The stored figure, scaled linearly to this job's batch."""
        row = found.figures[(role, architecture)]
        batch = kd_batch if role in KD_BATCH_ROLES else synth_batch
        return row.ms * batch / max(1, row.batch_size)

    kd_ms = [ms("kd", a) for a in students]
    max_rate = int(effective["kd_max_rate"])
    rates = kd_rates(kd_ms, max_rate) if max_rate > 1 and len(students) > 1 else [1] * len(students)
    synth_ms = {"teacher": ms("synthesis_teacher", teacher), "generator": ms("synthesis_generator", generator),
                "students": [ms("synthesis", a) for a in students]}
    generators = int(effective.get("num_generators") or len(students))
    teacher_ms = ms("teacher_forward", teacher)
    base = sizing.costs_from(effective, kd_ms, teacher_ms, synth_ms, rates, generators, 0.0)
    costs = sizing.costs_from(effective, kd_ms, teacher_ms, synth_ms, rates, generators,
                              generators * base.warmup_synth_step_s + EVALUATION_S)
    planned = sizing.plan_run(intent, shape, card.num_classes, cuda, seconds, costs, names)
    assert planned.advice is not None  # a seconds budget and costs: always advice
    device = found.device or kind
    return advice_view(planned.advice.to_dict(), basis="history", device=device, measured_at=found.measured_at,
                       message=planned.advice.message(device))


__all__ = ["EVALUATION_S", "budget_advice", "device_kind_for"]
