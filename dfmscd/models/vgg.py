"""VGG with BatchNorm for small images (the CIFAR variants used in CRD/Fast-DFKD: vgg8/11/13).

Five conv groups, a max-pool after each of the first four (guarded so 8x8 inputs do not
collapse), then global average pooling and one linear classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dfmscd.models.layers import GuardedMaxPool2d, init_weights
from dfmscd.models.registry import register_model

_CFG: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


class VGG(nn.Module):
    def __init__(self, cfg: tuple[tuple[int, ...], ...], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for i, group in enumerate(cfg):
            for width in group:
                layers += [nn.Conv2d(ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                ch = width
            if i < len(cfg) - 1:
                layers.append(GuardedMaxPool2d())
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg(name: str):
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return VGG(_CFG[name], num_classes, in_channels)

    factory.__name__ = name
    factory.__doc__ = f"{name.upper()} with BatchNorm, CIFAR variant."
    return factory


vgg8 = register_model(_vgg("vgg8"))
vgg11 = register_model(_vgg("vgg11"))
vgg13 = register_model(_vgg("vgg13"))
