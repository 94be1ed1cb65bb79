"""The image generator of Fast-DFKD, sized for any teacher input (C ∈ {1,3}, H = W ∈ [8, 224]).

z → Linear → BN → k × (upsample ×2 → conv → BN → LeakyReLU) → conv → sigmoid, then the
teacher's normalisation. The number of upsamplings is chosen so that the first feature map is
about H/4 for small inputs (8 for 32×32, as in Fast-DFKD) and never more than five doublings
for large ones; when H is not a power of two times the start size the output is centre-cropped.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

Tensor = torch.Tensor

MAX_UPSAMPLINGS = 5


def plan_upsampling(image_size: int) -> tuple[int, int]:
    """(number of ×2 upsamplings, start size) for a square output of side ``image_size``."""
    k = min(MAX_UPSAMPLINGS, max(1, round(math.log2(image_size / 8))))
    return k, math.ceil(image_size / 2**k)


class Generator(nn.Module):
    """Maps a latent batch to normalised images shaped like the teacher's input."""

    def __init__(
        self,
        latent_dim: int,
        width: int,
        channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        self.num_upsamplings, self.start_size = plan_upsampling(image_size)
        wide = 2 * width
        self.l1 = nn.Linear(latent_dim, wide * self.start_size**2)
        blocks: list[nn.Module] = [nn.BatchNorm2d(wide)]
        in_ch = wide
        for i in range(self.num_upsamplings):
            out_ch = width if i == self.num_upsamplings - 1 else wide
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.LeakyReLU(0.2),
            ]
            in_ch = out_ch
        blocks += [nn.Conv2d(in_ch, channels, 3, 1, 1), nn.Sigmoid()]
        self.blocks = nn.Sequential(*blocks)
        self.register_buffer("norm_mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("norm_std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def render(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images in [0, 1] (before the teacher's normalisation)."""
        if self.embed is not None:
            if y is None:
                raise ValueError("this generator is class-conditional: pass the labels")
            z = z + self.embed(y)
        x = self.l1(z).view(z.shape[0], -1, self.start_size, self.start_size)
        x = self.blocks(x)
        extra = x.shape[-1] - self.image_size
        if extra:
            lo = extra // 2
            x = x[..., lo : lo + self.image_size, lo : lo + self.image_size]
        return x

    def normalise(self, x01: Tensor) -> Tensor:
        return (x01 - self.norm_mean) / self.norm_std

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.normalise(self.render(z, y))

    def reset_first_layer(self) -> None:
        """Fast-DFKD's ``reset_l0``: re-draw the latent projection to escape a collapsed mode."""
        nn.init.normal_(self.l1.weight, 0.0, 0.02)
        nn.init.zeros_(self.l1.bias)

    def reset_all(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()


def to_uint8(x01: Tensor) -> Tensor:
    """[0, 1] floats → uint8 in [0, 255] (rounded), for the pool."""
    return (x01.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def from_uint8(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 pool images → the teacher's normalised float input (mean/std shaped 1×C×1×1)."""
    return (images.to(mean.dtype) / 255.0 - mean) / std
