"""Images picked from the pool: a few per class for ``samples.png`` (drawn by ``dfmscd.report``), and
the class-balanced calibration sample that INT8 quantization of the students is calibrated on."""

from __future__ import annotations

import torch

from dfmscd.synthesis.pool import ImagePool

Tensor = torch.Tensor


def pick_samples(pool: ImagePool, per_class: int = 8) -> tuple[Tensor, Tensor]:
    """Up to ``per_class`` of the most recent images per teacher class (uint8, int64 labels)."""
    n = len(pool)
    argmax = pool.teacher_argmax[:n]
    images, labels = [], []
    for c in range(pool.num_classes):
        idx = torch.nonzero(argmax == c).flatten()[-per_class:]
        images.append(pool.gather(idx).cpu())  # the pool may live on the accelerator
        labels.append(torch.full((idx.numel(),), c, dtype=torch.int64))
    if not images:
        return torch.empty((0, *pool.image_shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return torch.cat(images), torch.cat(labels)


CALIBRATION_IMAGES = 1024  # enough for static INT8 calibration (ZeroQ/GDFQ use a few hundred to a few thousand)


def pick_calibration(pool: ImagePool, n: int = CALIBRATION_IMAGES) -> Tensor:
    """Up to ``n`` pool images, as even over the teacher's classes as the pool allows: the most recent
    images of each class in turn (no random draw, so the sample, and a file calibrated on it, is the
    same for the same pool)."""
    size = len(pool)
    if size == 0:
        return torch.empty((0, *pool.image_shape), dtype=torch.uint8)
    argmax = pool.teacher_argmax[:size]
    per_class = [torch.nonzero(argmax == c).flatten().flip(0) for c in range(pool.num_classes)]  # newest first
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n, size):
        row = [int(idx[depth]) for idx in per_class if depth < idx.numel()]
        if not row:
            break
        picked += row[: min(n, size) - len(picked)]
        depth += 1
    return pool.gather(torch.tensor(sorted(picked), dtype=torch.long)).cpu()
