"""Wide ResNets (Zagoruyko & Komodakis 2016): WRN-d-k, pre-activation blocks, 16k/32k/64k channels.

Key names follow the usual CIFAR implementation used in KD papers (``conv1``, ``block1..3.layer.i``,
``bn1``, ``fc``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfmscd.models.layers import init_weights
from dfmscd.models.registry import register_model


class WideBasic(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == planes and stride == 1
        self.conv_shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(pre)
        return out + shortcut


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasic(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, dropout)
            for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def _wrn(depth: int, widen: int):
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32, dropout: float = 0.0) -> nn.Module:
        return WideResNet(depth, widen, num_classes, in_channels, dropout)

    factory.__name__ = f"wrn_{depth}_{widen}"
    factory.__doc__ = f"WRN-{depth}-{widen}."
    return factory


wrn_16_1 = register_model(_wrn(16, 1))
wrn_16_2 = register_model(_wrn(16, 2))
wrn_40_1 = register_model(_wrn(40, 1))
wrn_40_2 = register_model(_wrn(40, 2))
