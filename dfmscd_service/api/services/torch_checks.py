"""The API's torch work, run only in the pool's child processes (``dfmscd_service.api.services.torch_pool``).

Every function here takes and returns plain picklable data (dicts, lists, the small dataclasses
of ``dfmscd_service.api.services.teacher_validation``), never ORM rows or HTTP errors: the web process
turns a ``Refusal`` into the same 422 it always answered. Importing this module does not import
torch; its functions do, in the child.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from dfmscd.errors import CardError, CheckpointError, DfmscdError


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the web process answers it as ``422 {"error": {code, message}}``."""

    code: str
    message: str


@dataclass(frozen=True)
class TeacherValidation:
    """An accepted teacher: its card (JSON, as stored) and warnings to show the uploader."""

    card: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StudentCheck:
    """One requested student: a known architecture?, why it cannot be built, its parameter count."""

    known: bool
    error: str | None = None
    parameters: int | None = None
    cost: int | None = None  # dfmscd.costs.estimate_cost at the card's input shape (dfmscd models only)


def init_child(threads: int) -> None:
    """Pool initializer: torch (a few seconds) and the zoo are imported once per child."""
    import torch  # deferred on purpose: this runs in the pool's child, never in the web process

    if threads > 0:
        torch.set_num_threads(threads)
    import dfmscd.io  # noqa: F401
    import dfmscd.models  # noqa: F401


def ping() -> bool:
    """A no-op task: submitting it starts a child (``torch_pool.warm``)."""
    return True


def check_card(card: dict[str, Any]) -> Refusal | None:
    """The card's architecture exists and accepts its arch_kwargs (nothing is built)."""
    from dfmscd.io import parse_card, validate_card

    try:
        validate_card(parse_card(card))
    except DfmscdError as exc:
        return Refusal("invalid_card", str(exc))
    return None


def check_teacher(path: str, card: dict[str, Any], max_bytes: int,
                  display_name: str | None = None) -> TeacherValidation | Refusal:
    """Load and build the teacher (weights-only, BN required): its card and warnings, or a refusal.

    The library names the file it read, here the server's temp file: its name is replaced by
    ``display_name`` (the client's file name) so that the message speaks of the user's file.
    """
    from dfmscd.io import load_teacher, parse_card

    from dfmscd.normalisation import normalisation_warnings

    parsed = parse_card(card)
    try:
        teacher = load_teacher(path, parsed, max_bytes=max_bytes)
    except CardError as exc:
        return Refusal("invalid_card", _relabel(str(exc), path, display_name))
    except CheckpointError as exc:
        return Refusal("invalid_checkpoint", _relabel(str(exc), path, display_name))
    except DfmscdError as exc:
        return Refusal("invalid_teacher", _relabel(str(exc), path, display_name))
    return TeacherValidation(card=parsed.model_dump(mode="json", exclude_none=True),
                             warnings=normalisation_warnings(teacher, parsed))


def _relabel(message: str, path: str, display_name: str | None) -> str:
    return message.replace(os.path.basename(path), display_name or "weights file")


def check_students(card: dict[str, Any], students: list[tuple[str, dict[str, Any]]]) -> list[StudentCheck]:
    """For each (architecture, arch_kwargs): known?, the reason it cannot be built, its parameter count.

    The library's pre-flight checks names, sizes and kwargs without building anything; the
    small dfmscd architectures are then built on the CPU (milliseconds) to count parameters,
    while torchvision and timm ones (which can be large) are counted by the worker when it builds them.
    """
    from dfmscd.costs import estimate_cost
    from dfmscd.io import parse_card
    from dfmscd.models import check_model_arguments, count_parameters, create_model, is_model

    parsed = parse_card(card)
    c, side = parsed.input_shape[0], parsed.input_shape[1]
    kwargs = dict(num_classes=parsed.num_classes, in_channels=c, image_size=side)
    out = []
    for architecture, arch_kwargs in students:
        if not is_model(architecture):
            out.append(StudentCheck(known=False))
            continue
        try:
            check_model_arguments(architecture, **kwargs, **arch_kwargs)
            params = cost = None
            if not architecture.startswith(("tv/", "timm/")):
                model = create_model(architecture, **kwargs, **arch_kwargs)
                params, cost = count_parameters(model), estimate_cost(model, parsed.input_shape)
            out.append(StudentCheck(known=True, parameters=params, cost=cost))
        except DfmscdError as exc:
            out.append(StudentCheck(known=True, error=str(exc)))
        except TypeError as exc:
            out.append(StudentCheck(known=True, error=f"bad arch_kwargs: {exc}"))
    return out


def model_names(family: str) -> list[str]:
    """The zoo's names of one family: ``dfmscd``, ``torchvision`` (tv/) or ``timm`` (timm/), sorted."""
    from dfmscd.models import list_models

    if family == "dfmscd":
        return list_models(include_torchvision=False)
    if family == "torchvision":
        return [n for n in list_models() if n.startswith("tv/")]
    return [n for n in list_models(include_torchvision=False, include_timm=True) if n.startswith("timm/")]


def count_parameters(names: list[str], reference: dict[str, int]) -> dict[str, int | None]:
    """Parameter counts at the reference size; None for a model that cannot be built there.

    dfmscd models are small: built on the CPU. torchvision and timm ones go on the meta device
    (no memory; the first use costs seconds)."""
    import torch  # deferred on purpose: this runs in the pool's child, never in the web process

    from dfmscd.models import count_parameters as count, create_model

    out: dict[str, int | None] = {}
    for name in names:
        try:
            if not name.startswith(("tv/", "timm/")):
                out[name] = count(create_model(name, **reference))
            else:
                with torch.device("meta"):
                    out[name] = count(create_model(name, **reference))
        except Exception:  # noqa: BLE001 - a model that cannot be built at the reference size
            out[name] = None
    return out


def export_model(src: str, fmt: str, dest: str) -> Refusal | None:
    """Export a stored model file (safetensors with its card) to ONNX or TorchScript at ``dest``."""
    from dfmscd.io import export_as, load_model

    module, card = load_model(src)
    try:
        export_as(fmt, module, card, dest)
    except DfmscdError as exc:
        return Refusal("export_failed", f"cannot export to {fmt}: {exc}")
    return None


def check_evaluation_set(path: str, card: dict[str, Any] | None, display_name: str | None = None) -> dict[str, Any] | Refusal:
    """What an evaluation set holds (``dfmscd.evaluate.describe_evaluation_set``: every image read,
    hostile archives and oversized sets refused) and, with ``card``, that it fits that card (its
    input shape, classes and label range: ``read_evaluation_set``). A refusal names the user's file."""
    from dfmscd.evaluate import describe_evaluation_set, read_evaluation_set
    from dfmscd.io import parse_card

    try:
        summary = describe_evaluation_set(path)
        if card is not None:
            x, _ = read_evaluation_set(path, parse_card(card))
            summary["images"] = int(x.shape[0])
    except DfmscdError as exc:
        return Refusal("invalid_evaluation_set", _relabel(str(exc).splitlines()[0], path, display_name or "evaluation set"))
    return summary
