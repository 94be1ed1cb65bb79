"""Everything a job request must satisfy before a row is written (so workers never see junk)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dfmscd_service.api.errors import ApiError
from dfmscd_service.core.models import Teacher
from dfmscd_service.api.schemas import JobCreate
from dfmscd_service.core.settings import Settings
from dfmscd.config import PRESETS, Budget, DistillConfig, resolve_budget, resolve_config
from dfmscd.errors import DfmscdError
from dfmscd.io.card import ModelCard

NAME_RE = re.compile(r"^(?!\.)[A-Za-z0-9_.-]{1,64}$")


@dataclass
class StudentPlan:
    name: str
    architecture: str
    arch_kwargs: dict[str, Any]
    parameters: int | None


@dataclass
class JobPlan:
    config: DistillConfig
    budget: Budget
    students: list[StudentPlan]
    metadata: dict[str, Any]


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def default_student_name(architecture: str) -> str:
    """The architecture, made a valid name (``tv/resnet18`` → ``tv_resnet18``)."""
    return architecture.replace("/", "_")


def _invalid(message: str, code: str = "validation_error") -> ApiError:
    return ApiError(422, code, message)


def _check_student(architecture: str, arch_kwargs: dict[str, Any], card: ModelCard) -> int | None:
    """Prove the student can be built for this teacher; its parameter count when that is cheap.

    The library's pre-flight checks names, sizes and kwargs without building anything; the
    small dfmscd architectures are then built on the CPU (milliseconds) to count parameters,
    while torchvision and timm ones (which can be large) are counted by the worker when it builds them.
    """
    from dfmscd.models import check_model_arguments, count_parameters, create_model

    c, side = card.input_shape[0], card.input_shape[1]
    kwargs = dict(num_classes=card.num_classes, in_channels=c, image_size=side)
    try:
        check_model_arguments(architecture, **kwargs, **arch_kwargs)
        if architecture.startswith(("tv/", "timm/")):
            return None
        return count_parameters(create_model(architecture, **kwargs, **arch_kwargs))
    except DfmscdError as exc:
        raise _invalid(f"student {architecture!r}: {exc}", "invalid_student") from None
    except TypeError as exc:
        raise _invalid(f"student {architecture!r}: bad arch_kwargs: {exc}", "invalid_student") from None


def _students(body: JobCreate, card: ModelCard, settings: Settings) -> list[StudentPlan]:
    from dfmscd.models import is_model

    n = len(body.students)
    if not 1 <= n <= settings.max_students:
        raise _invalid(f"students: give between 1 and {settings.max_students} students, got {n}")
    plans: list[StudentPlan] = []
    seen: set[str] = set()
    for i, s in enumerate(body.students):
        if not is_model(s.architecture):
            raise _invalid(
                f"students[{i}].architecture: unknown architecture {s.architecture!r}; see GET /v1/architectures",
                "unknown_architecture",
            )
        name = s.name if s.name is not None else default_student_name(s.architecture)
        if not NAME_RE.match(name):
            raise _invalid(
                f"students[{i}].name: {name!r} is not a valid name "
                "(1-64 characters from A-Z a-z 0-9 _ . -, not starting with '.')"
            )
        if name in seen:
            raise _invalid(f"students[{i}].name: duplicate student name {name!r}")
        seen.add(name)
        params = _check_student(s.architecture, dict(s.arch_kwargs), card)
        plans.append(StudentPlan(name, s.architecture, dict(s.arch_kwargs), params))
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
    try:
        budget = Budget.model_validate(body.budget.model_dump(exclude_none=True))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise _invalid(f"budget{'.' + loc if loc else ''}: {msg}", "invalid_budget") from None
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
    return JobPlan(config=config, budget=budget, students=students, metadata=metadata)
