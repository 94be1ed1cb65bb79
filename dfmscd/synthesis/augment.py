"""Differentiable augmentation: per-sample random crop with padding and horizontal flip.

Written with tensor indexing so gradients reach the generator. Random draws come from the
global torch CPU generator (seeded and checkpointed by the engine), so a run is reproducible
whatever the device. Padding is black (0 in [0, 1] space), as torchvision's ``RandomCrop``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def default_padding(image_size: int) -> int:
    """4 pixels at 32×32 (Fast-DFKD), scaled with the side, at least 1."""
    return max(1, image_size // 8)


class DiffAugment:
    """Callable on N×C×H×W images in [0, 1]; returns the same shape."""

    def __init__(self, image_size: int, flip: bool, padding: int | None = None) -> None:
        self.padding = default_padding(image_size) if padding is None else padding
        self.flip = flip

    def __call__(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        p = self.padding
        if p > 0:
            padded = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n,)).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (n,)).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # N×H×1
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # N×1×W
            batch = torch.arange(n, device=x.device)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # N×C×H×W
        if self.flip:
            mask = (torch.rand(n) < 0.5).to(x.device)[:, None, None, None]
            x = torch.where(mask, x.flip(3), x)
        return x.contiguous()
