"""What a finished run reports about itself: pool balance and diversity, held-out teacher agreement."""

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
    n = len(pool)
    recognised = float((pool.teacher_argmax[:n] == pool.labels[:n]).double().mean()) if n else None
    return {
        "recognised_rate": recognised,
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
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[list[float], int, torch.Tensor]:
    """Each student's argmax agreement with the teacher on one fresh, class-balanced synthesis
    round per generator. The images never enter the pool, so no student has trained on them;
    the slow generators are not updated (this runs after the final checkpoint). The engine runs
    it without the adversarial terms: the figure is agreement on the generators' ordinary
    output, and it then costs teacher passes only, which keeps a seconds budget's reserve small.
    Returns the agreements, the number of images, and the images (uint8, CPU): a held-out set that
    exported students are verified on."""
    n = config.synth_batch_size
    labels = torch.arange(n) % num_classes
    agree, total = [0] * len(students), 0
    kept: list[torch.Tensor] = []
    with students.frozen() as modules:
        for k, slow in enumerate(mixture.generators):
            out = synthesize(
                slow, mixture.fast_for(k), None, labels=labels, teacher=teacher, hooks=hooks, students=modules,
                partner=mixture.partners[k], weights=weights, augment=augment, lr_g=config.lr_g,
                lr_z=config.lr_z, inner_steps=config.inner_steps, meta_algorithm=config.meta_algorithm,
                other_summaries=mixture.other_summaries(k), adversarial=adversarial,
                amp_dtype=amp_dtype, memory_format=memory_format,
            )  # fmt: skip
            assert out is not None  # no cancellation callback here
            x = to_input(out.images)
            t = out.teacher_argmax.to(x.device)
            with torch.no_grad(), students.autocast():
                hits = torch.stack([(s(x).argmax(dim=1) == t).sum() for s in modules]).cpu().tolist()
            agree = [a + h for a, h in zip(agree, hits)]
            total += n
            kept.append(out.images.cpu())
    return [a / total for a in agree], total, torch.cat(kept)


def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The input of the model's last ``nn.Linear`` (its penultimate features), N×D float32.

    Falls back to the logits for a model without a Linear layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    captured: list[torch.Tensor] = []
    handle = None
    if linears:
        handle = linears[-1].register_forward_pre_hook(lambda _m, inp: captured.append(inp[0].detach().flatten(1).float()))
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                out = model(x[i : i + batch_size])
                outs.append(captured.pop() if captured else out.detach().float())
                captured.clear()
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(outs) if outs else torch.empty(0)


def within_class_distance(features: torch.Tensor, classes: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Mean pairwise Euclidean distance between same-class feature vectors.

    ``per_class[c]`` is the mean over the n(n−1) ordered pairs i ≠ j of class c (None below two
    members); ``mean`` averages the classes that have a figure (None when none has)."""
    per_class: list[float | None] = []
    for c in range(num_classes):
        f = features[classes == c]
        n = f.shape[0]
        if n < 2:
            per_class.append(None)
            continue
        d = torch.cdist(f.double(), f.double())
        per_class.append(float(d.sum() / (n * (n - 1))))
    known = [v for v in per_class if v is not None]
    return {"mean": sum(known) / len(known) if known else None, "per_class": per_class}


def pool_diversity(teacher: nn.Module, pool: ImagePool, to_input: Callable[[torch.Tensor], torch.Tensor],
                   per_class: int = 64) -> dict[str, Any]:
    """Diversity within each class of the pool in the teacher's penultimate features, and the
    teacher's confidence on the pool (mean max-softmax).

    Up to ``per_class`` of the most recent images of each teacher class are used, so the cost is
    bounded (one teacher forward over ≤ C·per_class images)."""
    n = len(pool)
    if n == 0:
        return {"within_class_feature_distance": None, "per_class": [], "images": 0, "teacher_confidence": None}
    argmax = pool.teacher_argmax[:n]
    idx = torch.cat([torch.nonzero(argmax == c).flatten()[-per_class:] for c in range(pool.num_classes)])
    x = to_input(pool.gather(idx))
    feats = penultimate_features(teacher, x)
    with torch.no_grad():
        conf = torch.softmax(teacher(x).float(), dim=1).amax(dim=1).mean()
    dist = within_class_distance(feats.cpu(), argmax[idx], pool.num_classes)
    return {"within_class_feature_distance": dist["mean"], "per_class": dist["per_class"],
            "images": int(idx.numel()), "teacher_confidence": float(conf)}
