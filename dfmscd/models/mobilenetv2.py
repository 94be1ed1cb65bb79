"""MobileNetV2 (Sandler et al. 2018) for small images: stride-1 stem and first two stages.

Inverted residual blocks with BN; ``width_mult`` scales every channel count (rounded to 8).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dfmscd.models.layers import conv_bn_relu, init_weights
from dfmscd.models.registry import register_model

# (expansion, out_channels, blocks, stride) - CIFAR strides: only three stride-2 stages (32 -> 4).
_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _round8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu(in_ch, hidden, 1, relu6=True))
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, relu6=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        if not 0.1 <= width_mult <= 4.0:
            raise ValueError("width_mult must be between 0.1 and 4")
        ch = _round8(32 * width_mult)
        last = _round8(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_relu(in_channels, ch, 3, 1, relu6=True)]
        for t, c, n, s in _CFG:
            out = _round8(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(ch, out, s if i == 0 else 1, t))
                ch = out
        layers.append(conv_bn_relu(ch, last, 1, relu6=True))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def mobilenetv2(num_classes: int, in_channels: int = 3, image_size: int = 32, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV2, CIFAR strides."""
    return MobileNetV2(num_classes, in_channels, width_mult)
