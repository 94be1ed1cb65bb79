"""ShuffleNetV2 (Ma et al. 2018) for small images: stride-1 3x3 stem, no max-pool.

``net_size`` picks the channel widths of the paper's 0.5x/1x/1.5x/2x variants.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dfmscd.models.layers import conv_bn_relu, init_weights
from dfmscd.models.registry import register_model

_WIDTHS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024), 1.5: (176, 352, 704, 1024), 2.0: (224, 488, 976, 2048)}
_BLOCKS = (3, 7, 3)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _branch(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        conv_bn_relu(in_ch, out_ch, 1),
        nn.Conv2d(out_ch, out_ch, 3, stride, 1, groups=out_ch, bias=False),
        nn.BatchNorm2d(out_ch),
        conv_bn_relu(out_ch, out_ch, 1),
    )


class ShuffleBlock(nn.Module):
    """Stride 1: split channels, transform one half. Stride 2: transform both, doubling width."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        if stride == 1:
            self.shortcut = None
            self.branch = _branch(in_ch // 2, half, 1)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, in_ch, 3, 2, 1, groups=in_ch, bias=False),
                nn.BatchNorm2d(in_ch),
                conv_bn_relu(in_ch, half, 1),
            )
            self.branch = _branch(in_ch, half, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.branch(b)], dim=1)
        else:
            out = torch.cat([self.shortcut(x), self.branch(x)], dim=1)
        return channel_shuffle(out)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, net_size: float = 1.0) -> None:
        super().__init__()
        if net_size not in _WIDTHS:
            raise ValueError(f"net_size must be one of {sorted(_WIDTHS)}")
        widths = _WIDTHS[net_size]
        self.conv1 = conv_bn_relu(in_channels, 24, 3, 1)
        ch, stages = 24, []
        for out, n in zip(widths[:3], _BLOCKS):
            blocks = [ShuffleBlock(ch, out, 2)] + [ShuffleBlock(out, out, 1) for _ in range(n)]
            stages.append(nn.Sequential(*blocks))
            ch = out
        self.stages = nn.Sequential(*stages)
        self.conv2 = conv_bn_relu(ch, widths[3], 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.stages(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


@register_model
def shufflenetv2(num_classes: int, in_channels: int = 3, image_size: int = 32, net_size: float = 1.0) -> nn.Module:
    """ShuffleNetV2, CIFAR stem."""
    return ShuffleNetV2(num_classes, in_channels, float(net_size))
