"""Small building blocks shared by the zoo.

The zoo must run on inputs from 8x8 to 224x224; a plain 2x2 max-pool on a 1x1 map raises, so
downsampling by pooling goes through :class:`GuardedMaxPool2d`, which leaves maps smaller than
its window untouched (strided 3x3 convs with padding 1 never collapse: 1x1 stays 1x1).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm


def tracked_batchnorms(module: nn.Module) -> list[_BatchNorm]:
    """The BN layers whose running statistics DF-MSCD matches: the one test of "has BatchNorm"
    (a teacher without any cannot be distilled from, and these are the layers hooked)."""
    return [m for m in module.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


class GuardedMaxPool2d(nn.Module):
    """2x2/stride-2 max-pool that is the identity on maps already smaller than 2x2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            return x
        return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 relu6: bool = False) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU(6), "same" padding."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
    )


def init_weights(module: nn.Module) -> None:
    """Kaiming for convs, unit BN, small-normal linear: the usual CIFAR initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
