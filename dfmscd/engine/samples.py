"""A few pooled images per class, and the PNG grid the CLI writes as ``samples.png``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfmscd.synthesis.pool import ImagePool

Tensor = torch.Tensor


def pick_samples(pool: ImagePool, per_class: int = 8) -> tuple[Tensor, Tensor]:
    """Up to ``per_class`` of the most recent images per teacher class (uint8, int64 labels)."""
    n = len(pool)
    argmax = pool.teacher_argmax[:n]
    images, labels = [], []
    for c in range(pool.num_classes):
        idx = torch.nonzero(argmax == c).flatten()[-per_class:]
        images.append(pool.images[idx])
        labels.append(torch.full((idx.numel(),), c, dtype=torch.int64))
    if not images:
        return torch.empty((0, *pool.image_shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return torch.cat(images), torch.cat(labels)


def save_samples_png(samples: Tensor, labels: Tensor, path: str | Path, min_tile: int = 32) -> None:
    """One row per class present in ``labels``; tiles upscaled (nearest) to at least ``min_tile`` px."""
    if samples.dtype != torch.uint8 or samples.dim() != 4 or samples.shape[0] != labels.shape[0]:
        raise ValueError("samples must be uint8 N×C×H×W with one label per image")
    path = Path(path)
    classes = sorted(set(labels.tolist()))
    c, h, w = samples.shape[1:]
    scale = max(1, -(-min_tile // h))
    th, tw, gap = h * scale, w * scale, 2
    cols = max([int((labels == k).sum()) for k in classes], default=1)
    rows = max(len(classes), 1)
    canvas = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), 255, dtype=np.uint8)
    for r, k in enumerate(classes):
        for col, img in enumerate(samples[labels == k]):
            tile = img.permute(1, 2, 0).numpy()
            tile = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
            if c == 1:
                tile = np.repeat(tile, 3, axis=2)
            y0, x0 = gap + r * (th + gap), gap + col * (tw + gap)
            canvas[y0 : y0 + th, x0 : x0 + tw] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(canvas).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
