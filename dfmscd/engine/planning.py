"""The engine's side of ``dfmscd.sizing``: measuring a run's costs and applying the derived values.

Shape values are applied when a run is set up (the same on every start, so an epochs budget stays
bit-reproducible and a resumed run rebuilds the same generators and pool). Budget values need the
costs on this device: they are measured once, at a run's first start, and kept in the checkpoint,
so a resumed run takes the same steps.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from dfmscd import sizing
from dfmscd.config import DistillConfig
from dfmscd.costs import measure_backward_ms

# A student's agreement with the teacher on held-out synthetic images below this is flagged.
LOW_AGREEMENT = 0.5


def derived_fields(config: DistillConfig) -> set[str]:
    """The fields a run derives (sizable, not pinned); empty with auto sizing off."""
    if not config.auto_size:
        return set()
    return set(sizing.SIZABLE) - set(config.pinned)


def fingerprint_config(config: DistillConfig) -> dict[str, Any]:
    """The config as the user meant it: derived fields are outputs of a run, not inputs, so they are
    left out of the checkpoint's fingerprint (the service writes them back into the stored config)."""
    dump = config.model_dump(mode="json")
    for key in derived_fields(config):
        dump.pop(key, None)
    return dump


def with_values(config: DistillConfig, values: dict[str, Any]) -> DistillConfig:
    return DistillConfig.model_validate({**config.model_dump(), **values}) if values else config


def shape_sized(config: DistillConfig, input_shape: Sequence[int], num_classes: int, cuda: bool,
                names: Sequence[str]) -> tuple[DistillConfig, dict[str, Any]]:
    plan = sizing.plan_run(config.model_dump(), input_shape, num_classes, cuda, None, None, names)
    return with_values(config, plan.values), plan.values


def synthesis_costs_ms(*, teacher: nn.Module, students: Sequence[nn.Module], generator: nn.Module,
                       config: DistillConfig, input_shape: Sequence[int], device: torch.device,
                       memory_format: torch.memory_format, autocast: Any) -> dict[str, Any]:
    """Milliseconds of one pass (forward and backward to the input) at the synthesis batch: the
    teacher, each student (frozen, as the generators see them; a list) and one generator."""
    n = config.synth_batch_size

    def images() -> torch.Tensor:
        return torch.zeros(n, *input_shape, device=device).contiguous(memory_format=memory_format)

    out: dict[str, Any] = {}
    with autocast():
        out["teacher"] = measure_backward_ms(teacher, images, device=device)
        out["students"] = [measure_backward_ms(s, images, device=device, frozen=True) for s in students]
    labels = torch.zeros(n, dtype=torch.long, device=device)
    out["generator"] = measure_backward_ms(
        _Render(generator), lambda: (torch.zeros(n, generator.latent_dim, device=device), labels), device=device)
    return out


class _Render(nn.Module):
    def __init__(self, gen: nn.Module) -> None:
        super().__init__()
        self.gen = gen

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.gen.render(z, y if self.gen.num_classes else None)


def student_flags(agreement: dict[str, float | None], updates: dict[str, int], floor: int) -> dict[str, str]:
    """A message for each student whose held-out agreement with the teacher is below LOW_AGREEMENT,
    naming the likely cause: fewer KD updates than the floor, or a budget too small for this student."""
    flags = {}
    for name, agr in agreement.items():
        if agr is None or agr >= LOW_AGREEMENT:
            continue
        got = updates.get(name, 0)
        cause = (f"too few KD updates ({got}, the defaults need {floor}): give a larger budget"
                 if floor and got < floor else
                 f"the budget is too small for this student ({got} KD updates were not enough): give a larger "
                 "budget, or a separate job for it")
        flags[name] = f"student {name!r} agrees with the teacher on only {agr:.0%} of held-out synthetic images; {cause}"
    return flags


def device_label(device: torch.device) -> str:
    """How the advice names the device: the GPU's name, or the CPU's model and torch's threads."""
    if device.type == "cuda":
        try:
            return f"{device} ({torch.cuda.get_device_name(device)})"
        except (RuntimeError, AssertionError):
            return str(device)
    model = "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({model}, {torch.get_num_threads()} threads)"


def missing_classes(histogram: Sequence[int], class_names: Sequence[str] | None) -> list[str]:
    """The classes no pool image shows (by the teacher's argmax), named when the card names them."""
    return [(class_names[i] if class_names and i < len(class_names) else str(i)) for i, n in enumerate(histogram) if n == 0]


__all__ = ["LOW_AGREEMENT", "derived_fields", "device_label", "fingerprint_config", "missing_classes", "shape_sized",
           "student_flags", "synthesis_costs_ms", "with_values"]
