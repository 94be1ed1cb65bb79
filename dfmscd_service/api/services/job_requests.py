"""Everything a job request must satisfy before a row is written (so workers never see junk)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from dfmscd.config import PRESETS, Budget, DistillConfig, parse_budget, resolve_budget, resolve_config
from dfmscd.costs import dominant_student_warning
from dfmscd.errors import DfmscdError
from dfmscd.io.card import ModelCard
from dfmscd.names import STUDENT_NAME_RULE, default_student_name, is_valid_student_name
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.schemas import JobCreate
from dfmscd_service.api.services import torch_checks, torch_pool
from dfmscd_service.api.services.torch_checks import StudentCheck
from dfmscd_service.core.models import Teacher
from dfmscd_service.core.settings import Settings



@dataclass
class StudentPlan:
    name: str
    architecture: str
    arch_kwargs: dict[str, Any]
    parameters: int | None
    cost: int | None = None  # estimated per-step cost (dfmscd.costs), None when unknown


@dataclass
class JobPlan:
    config: DistillConfig
    budget: Budget
    students: list[StudentPlan]
    metadata: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def request_hash(body: JobCreate) -> str:
    data = body.model_dump(mode="json")
    if data.get("evaluation_set_id") is None:  # a body without it hashes as it did before the field existed
        data.pop("evaluation_set_id", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _invalid(message: str, code: str = "validation_error") -> ApiError:
    return ApiError(422, code, message)


def _check_students(body: JobCreate, card: ModelCard) -> list[StudentCheck]:
    """Can each student be built for this teacher, and its parameter count when that is cheap:
    one trip to the torch pool for the whole request (``torch_checks.check_students``)."""
    return torch_pool.call(torch_checks.check_students, card.model_dump(mode="json", exclude_none=True),
                           [(s.architecture, dict(s.arch_kwargs)) for s in body.students])


def _students(body: JobCreate, card: ModelCard, settings: Settings) -> list[StudentPlan]:
    n = len(body.students)
    if not 1 <= n <= settings.max_students:
        raise _invalid(f"students: give between 1 and {settings.max_students} students, got {n}")
    plans: list[StudentPlan] = []
    seen: set[str] = set()
    checks = _check_students(body, card)
    for i, (s, check) in enumerate(zip(body.students, checks)):
        if not check.known:
            raise _invalid(
                f"students[{i}].architecture: unknown architecture {s.architecture!r}; see GET /v1/architectures",
                "unknown_architecture",
            )
        name = s.name if s.name is not None else default_student_name(s.architecture)
        if not is_valid_student_name(name):
            raise _invalid(f"students[{i}].name: {name!r} is not a valid name ({STUDENT_NAME_RULE})")
        if name in seen:
            raise _invalid(f"students[{i}].name: duplicate student name {name!r}")
        seen.add(name)
        if check.error is not None:
            raise _invalid(f"student {s.architecture!r}: {check.error}", "invalid_student")
        plans.append(StudentPlan(name, s.architecture, dict(s.arch_kwargs), check.parameters, check.cost))
    return plans


def _config(body: JobCreate) -> DistillConfig:
    if body.preset not in PRESETS:
        raise _invalid(f"preset: unknown preset {body.preset!r}; choose one of {sorted(PRESETS)}", "invalid_config")
    overrides = dict(body.hyperparameters)
    if body.seed is not None:
        if "seed" in overrides and overrides["seed"] != body.seed:
            raise _invalid("seed: given twice with different values (seed and hyperparameters.seed)", "invalid_config")
        overrides["seed"] = body.seed
    try:
        return resolve_config(body.preset, overrides)
    except DfmscdError as exc:
        raise _invalid(str(exc), "invalid_config") from None


def _check_device(config: DistillConfig, settings: Settings) -> None:
    """Refuse a device no worker has now, not hours later in the worker (the API may have no GPU)."""
    device = config.device
    if not device.startswith("cuda"):
        return
    gpus = settings.worker_gpus
    if gpus == 0:
        raise _invalid(f"hyperparameters.device: {device!r} asked for, but the workers have no GPU "
                       "(use 'auto' or 'cpu')", "invalid_config")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= gpus:
        raise _invalid(f"hyperparameters.device: {device!r} does not exist; the workers have {gpus} GPU(s), "
                       f"cuda:0 to cuda:{gpus - 1}", "invalid_config")


def _budget(body: JobCreate, config: DistillConfig, settings: Settings) -> Budget:
    if body.budget is None:
        return resolve_budget(config, None)
    raw = body.budget
    try:
        budget = parse_budget(raw)  # the library's one grammar, shared with `dfmscd distill --budget`
    except DfmscdError as exc:
        raise _invalid(str(exc), "invalid_budget") from None
    if budget.seconds is not None and budget.seconds > settings.max_job_seconds:
        raise _invalid(
            f"budget.seconds: {budget.seconds:g} s is over the service limit of {settings.max_job_seconds:g} s",
            "invalid_budget",
        )
    return budget


def _metadata(body: JobCreate, settings: Settings) -> dict[str, Any]:
    try:
        size = len(json.dumps(body.metadata, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise _invalid("metadata: NaN and Infinity are not valid JSON numbers") from None
    if size > settings.max_metadata_bytes:
        raise _invalid(f"metadata: {size} bytes of JSON; the limit is {settings.max_metadata_bytes}")
    return body.metadata


def plan_job(body: JobCreate, teacher: Teacher, settings: Settings) -> JobPlan:
    """Validate the request against the teacher; 422 naming the first problem."""
    card = ModelCard.model_validate(teacher.card)
    metadata = _metadata(body, settings)
    config = _config(body)
    _check_device(config, settings)
    budget = _budget(body, config, settings)
    students = _students(body, card, settings)
    slow = dominant_student_warning({s.name: s.cost for s in students})
    return JobPlan(config=config, budget=budget, students=students, metadata=metadata, warnings=[slow] if slow else [])
