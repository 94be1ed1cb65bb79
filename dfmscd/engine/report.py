"""What a finished run reports about itself: pool balance and held-out teacher agreement."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from dfmscd.config import DistillConfig
from dfmscd.engine.students import StudentGroup
from dfmscd.synthesis import DiffAugment, ImagePool, MixtureOfGenerators, SynthesisWeights, TeacherBNHooks, synthesize


def balance(hist: list[int]) -> float:
    """min/max of a histogram (1.0 = perfectly balanced, 0.0 = a class is missing)."""
    return (min(hist) / max(hist)) if hist and max(hist) > 0 else 0.0


def pool_report(pool: ImagePool) -> dict[str, Any]:
    hist_t, hist_l = pool.histogram("teacher_argmax"), pool.histogram("labels")
    return {
        "size": len(pool),
        "capacity": pool.capacity,
        "eviction": pool.eviction,
        "label_histogram": hist_l,
        "label_balance": balance(hist_l),
        "teacher_argmax_histogram": hist_t,
        "balance": balance(hist_t),
        "imbalance_max_over_min": (max(hist_t) / min(hist_t)) if hist_t and min(hist_t) > 0 else None,
    }


def held_out_agreement(
    *,
    mixture: MixtureOfGenerators,
    students: StudentGroup,
    teacher: nn.Module,
    hooks: TeacherBNHooks,
    weights: SynthesisWeights,
    augment: DiffAugment | None,
    config: DistillConfig,
    num_classes: int,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    adversarial: bool,
) -> tuple[list[float], int]:
    """Each student's argmax agreement with the teacher on one fresh, class-balanced synthesis
    round per generator. The images never enter the pool, so no student has trained on them;
    the slow generators are not updated (this runs after the final checkpoint)."""
    n = config.synth_batch_size
    labels = torch.arange(n) % num_classes
    agree, total = [0] * len(students), 0
    with students.frozen() as modules:
        for k, slow in enumerate(mixture.generators):
            out = synthesize(
                slow, mixture.fast, None, labels=labels, teacher=teacher, hooks=hooks, students=modules,
                partner=mixture.partners[k], weights=weights, augment=augment, lr_g=config.lr_g,
                lr_z=config.lr_z, inner_steps=config.inner_steps, meta_algorithm=config.meta_algorithm,
                other_summaries=mixture.other_summaries(k), adversarial=adversarial,
            )  # fmt: skip
            assert out is not None  # no cancellation callback here
            x = to_input(out.images)
            t = out.teacher_argmax.to(x.device)
            with torch.no_grad():
                for i, s in enumerate(modules):
                    agree[i] += int((s(x).argmax(dim=1) == t).sum())
            total += n
    return [a / total for a in agree], total
