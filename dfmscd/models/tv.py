"""torchvision classification models, adapted to 1-3 channels and small inputs. Never pretrained.

Adaptation (the state-dict keys stay exactly torchvision's, so a teacher trained with a plain
torchvision model whose first conv / classifier were swapped the same way loads unchanged):

* classifier: torchvision's own ``num_classes`` argument;
* first conv: the first ``nn.Conv2d`` of the network is replaced by an identical one taking
  ``in_channels`` inputs;
* small inputs: a forward pre-hook bilinearly resizes the input to the model's working size,
  ``max(image_size, minimum side of its family)`` (32 for the stride-32 CNNs, 64 for AlexNet and
  SqueezeNet, 75 for Inception-v3, 224 for the fixed-size transformers ViT/Swin/MaxViT).
  Inputs already at the working size pass through untouched.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfmscd.errors import ConfigError, UnknownArchitectureError

# Minimum input side per name prefix (checked in order); anything else gets DEFAULT_MIN_SIDE.
_MIN_SIDE: tuple[tuple[str, int], ...] = (
    ("vit_", 224), ("swin_", 224), ("maxvit_", 224),
    ("inception_v3", 75), ("alexnet", 64), ("squeezenet", 64),
)
DEFAULT_MIN_SIDE = 32
# Keys that would fetch pretrained weights (a download at run time) are never passed on.
_FORBIDDEN_KWARGS = frozenset({"weights", "pretrained", "progress", "weights_backbone"})


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm)))


def classification_models() -> list[str]:
    return list(_names())


def min_side(name: str) -> int:
    for prefix, side in _MIN_SIDE:
        if name.startswith(prefix):
            return side
    return DEFAULT_MIN_SIDE


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for path, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            break
    else:  # pragma: no cover - every torchvision classifier has a conv
        raise ConfigError("torchvision model has no Conv2d to adapt to the input channels")
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)


def _resize_hook(side: int):
    def hook(module: nn.Module, args: tuple[Any, ...]):
        x = args[0]
        if x.shape[-1] == side and x.shape[-2] == side:
            return None
        return (F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False), *args[1:])

    return hook


def check_tv_arguments(name: str, kwargs: dict[str, Any]) -> None:
    if name not in _names():
        raise UnknownArchitectureError(
            f"unknown architecture 'tv/{name}'; run 'dfmscd architectures' for the list"
        )
    bad = _FORBIDDEN_KWARGS.intersection(kwargs)
    if bad:
        raise ConfigError(f"tv/{name}: argument {sorted(bad)[0]!r} is not allowed (no pretrained weights)")


def create_tv_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    import torchvision.models as tvm

    check_tv_arguments(name, kwargs)
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid arguments for tv/{name}: {exc}") from None
    _replace_first_conv(model, in_channels)
    side = max(int(image_size), min_side(name))
    model.register_forward_pre_hook(_resize_hook(side))
    model.dfmscd_input_side = side  # type: ignore[attr-defined]  # for introspection / docs
    return model


__all__ = ["check_tv_arguments", "classification_models", "create_tv_model", "min_side", "DEFAULT_MIN_SIDE"]
