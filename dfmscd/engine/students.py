"""The co-evolving students: construction, the shared KD step, the cosine learning rate.

All students see the same batch in the same step: each is pulled toward the teacher
(KL at temperature T, ×T²) and, with weight β, toward the mean of its peers' detached
predictions. One backward over the summed losses updates every student at once; since peers
are detached, each student's gradient is exactly that of its own loss.
"""

from __future__ import annotations

import contextlib
import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from dfmscd import losses
from dfmscd.config import DistillConfig
from dfmscd.engine.types import StudentSpec
from dfmscd.errors import ConfigError, DfmscdError
from dfmscd.models import create_model

Tensor = torch.Tensor


def cosine_factor(fraction: float) -> float:
    """Cosine annealing from 1 to 0 over ``fraction`` ∈ [0, 1]."""
    f = min(max(fraction, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * f))


def build_student(spec: StudentSpec, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    c, h, _ = input_shape
    try:
        return create_model(spec.architecture, num_classes=num_classes, in_channels=c, image_size=h, **spec.arch_kwargs)
    except DfmscdError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build student {spec.architecture!r} with {spec.arch_kwargs}: {exc}") from None


def make_optimizer(module: nn.Module, config: DistillConfig) -> torch.optim.Optimizer:
    if config.student_optimizer == "sgd":
        return torch.optim.SGD(
            module.parameters(), lr=config.lr_s, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(module.parameters(), lr=config.lr_s, weight_decay=config.weight_decay)


class StudentGroup:
    def __init__(self, modules: Sequence[nn.Module], config: DistillConfig, amp_dtype: torch.dtype | None = None) -> None:
        self.modules = list(modules)
        self.amp_dtype = amp_dtype
        self.optimizers = [make_optimizer(m, config) for m in self.modules]
        self.base_lr = config.lr_s
        self.temperature, self.peer_beta = config.temperature, config.peer_beta

    def __len__(self) -> int:
        return len(self.modules)

    def set_lr_factor(self, factor: float) -> float:
        lr = self.base_lr * factor
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``amp_dtype`` on the students' device type (a no-op without one)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        device = next(self.modules[0].parameters()).device
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)

    def kd_step(self, x: Tensor, teacher_logits: Tensor, members: Sequence[int] | None = None) -> Tensor:
        """One co-evolution step on a shared batch for ``members`` (default: every student); returns
        their losses (detached, one per member). The peer term is over the members only.

        Forward passes run under ``autocast()``; the losses are computed in float32."""
        idx = range(len(self.modules)) if members is None else list(members)
        modules = [self.modules[i] for i in idx]
        for m in modules:
            m.train()
        with self.autocast():
            outs = [m(x).float() for m in modules]
        per_student = []
        for i, out in enumerate(outs):
            loss = losses.kd_loss(out, teacher_logits, self.temperature)
            if self.peer_beta > 0 and len(outs) > 1:
                peers = [o for j, o in enumerate(outs) if j != i]
                loss = loss + self.peer_beta * losses.peer_loss(out, peers, self.temperature)
            per_student.append(loss)
        optimizers = [self.optimizers[i] for i in idx]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        stacked = torch.stack(per_student)
        stacked.sum().backward()
        for opt in optimizers:
            opt.step()
        return stacked.detach()  # no host sync here: the caller sums on device

    @contextmanager
    def frozen(self) -> Iterator[list[nn.Module]]:
        """Eval mode, no parameter gradients: how the generators see the students."""
        for m in self.modules:
            m.eval()
            m.requires_grad_(False)
        try:
            yield self.modules
        finally:
            for m in self.modules:
                m.requires_grad_(True)
                m.train()

    def state_dict(self) -> dict:
        return {
            "modules": [m.state_dict() for m in self.modules],
            "optimizers": [o.state_dict() for o in self.optimizers],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["modules"]) != len(self.modules):
            raise ValueError("checkpoint has a different number of students")
        for m, o, ms, os_ in zip(self.modules, self.optimizers, state["modules"], state["optimizers"]):
            m.load_state_dict(ms)
            o.load_state_dict(os_)
