"""LeNet-5 and LeNet-5-half: the MNIST teacher/student pair of DAFL, ZSKD and DFAD.

Three 5x5 convolutions (6/16/120 channels, halved in ``lenet5_half``: 3/8/60), two 2x2 max-pools
and two linear layers (84 -> classes, halved: 42). Two departures from the papers' networks:

* a BatchNorm after every convolution and after the first linear layer, because data-free
  synthesis matches a teacher's BN statistics and DAFL's LeNet has none (so comparisons with
  the papers' tables are close, not identical);
* the first convolution pads by 2, so that MNIST's 28x28 gives the 32x32 maps of the original.

At 28x28 the last convolution sees a 5x5 map and returns 1x1, exactly LeNet-5. Other sizes run too
(the zoo takes 8x8 to 224x224): maps below the 5x5 kernel are zero-padded up to it, and the last
convolution's output is averaged to 1x1.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfmscd.models.layers import GuardedMaxPool2d, init_weights
from dfmscd.models.registry import register_model

KERNEL = 5


def _at_least_kernel(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad a map smaller than the 5x5 kernel (only inputs below 20x20 ever need it)."""
    h, w = x.shape[-2:]
    if h >= KERNEL and w >= KERNEL:
        return x
    ph, pw = max(0, KERNEL - h), max(0, KERNEL - w)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class LeNet5(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, int, int, int] = (6, 16, 120, 84)) -> None:
        super().__init__()
        c1, c2, c3, f1 = widths
        self.conv1 = nn.Conv2d(in_channels, c1, KERNEL, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, KERNEL, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, KERNEL, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.pool = GuardedMaxPool2d()
        self.fc1 = nn.Linear(c3, f1, bias=False)
        self.bn4 = nn.BatchNorm1d(f1)
        self.fc2 = nn.Linear(f1, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(_at_least_kernel(x)))))
        x = F.relu(self.bn3(self.conv3(_at_least_kernel(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(F.relu(self.bn4(self.fc1(x))))


@register_model
def lenet5(num_classes: int, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """LeNet-5 with BatchNorm (6/16/120 conv channels, 84 hidden units)."""
    return LeNet5(num_classes, in_channels, (6, 16, 120, 84))


@register_model
def lenet5_half(num_classes: int, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """LeNet-5-half: every layer of LeNet-5 at half width (3/8/60, 42), the DAFL/ZSKD student."""
    return LeNet5(num_classes, in_channels, (3, 8, 60, 42))
