"""ResNets for small images.

* ``resnet8/20/32/56``: CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of basic blocks
  with 16/32/64 channels, depth 6n+2.
* ``resnet18/34``: the ImageNet ResNets (4 stages, 64..512 channels) with the CIFAR stem
  (3x3 conv, stride 1, no max-pool), as used by Fast-DFKD's CIFAR experiments.

State-dict keys follow torchvision's naming (``conv1``, ``bn1``, ``layerN.i.conv1``,
``layerN.i.downsample.{0,1}``, ``fc``) so that teachers trained with the common public CIFAR
recipes (e.g. chenyaofo/pytorch-cifar-models) load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfmscd.models.layers import init_weights
from dfmscd.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """Basic-block ResNet with a stride-1 3x3 stem; the first stage keeps the resolution."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], num_classes: int,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)
        nn.init.kaiming_uniform_(self.fc.weight, a=5**0.5)  # torch default for the head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        return self.fc(torch.flatten(self.avgpool(out), 1))


def _cifar_resnet(depth: int):
    if (depth - 2) % 6:
        raise ValueError("CIFAR ResNet depth must be 6n+2")
    n = (depth - 2) // 6

    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return ResNet((n, n, n), (16, 32, 64), num_classes, in_channels)

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth} (3 stages x {n} basic blocks, 16/32/64 channels)."
    return factory


resnet8 = register_model(_cifar_resnet(8))
resnet20 = register_model(_cifar_resnet(20))
resnet32 = register_model(_cifar_resnet(32))
resnet56 = register_model(_cifar_resnet(56))


@register_model
def resnet18(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 conv stride 1, no max-pool)."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels)


@register_model
def resnet34(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """ResNet-34 with the CIFAR stem (3x3 conv stride 1, no max-pool)."""
    return ResNet((3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels)
