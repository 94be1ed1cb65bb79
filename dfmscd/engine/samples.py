"""A few pooled images per class: what ``samples.png`` shows (drawn by ``dfmscd.report``)."""

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
