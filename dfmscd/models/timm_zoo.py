"""timm classification models as ``timm/<name>``, adapted to 1-3 channels and small inputs. Never pretrained.

Adaptation (the state-dict keys stay exactly timm's, so a teacher trained with
``timm.create_model(name, num_classes=K, in_chans=C)`` loads unchanged):

* classifier and first layer: timm's own ``num_classes`` and ``in_chans`` arguments;
* small inputs: a forward pre-hook (the one ``tv/`` uses) bilinearly resizes the input to the
  model's working side. Models timm marks ``fixed_input_size`` (ViT, Swin, ...) work at their
  default input size (usually 224); every other model at ``max(image_size, minimum side)``, the
  minimum being the model's ``min_input_size`` when timm gives one, 75 for the Inception
  family and 32 otherwise (stride-32 CNNs).

Which names are listed: every name ``timm.list_models()`` gives (architectures, no pretrained
tags). Models without BatchNorm (ViTs with LayerNorm, NFNets, ...) are listed too: they are valid
*students*; as *teachers* they are refused by ``dfmscd.io.build_model(require_batchnorm=True)``,
exactly like the ``tv/`` ones, because knowing whether a timm model has BatchNorm means building it.

``import timm`` costs seconds (it imports every model family), so every import of timm in this
module is deferred on purpose, to the first function that needs it: importing ``dfmscd.models``
stays fast and only users of ``timm/`` names pay for it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch.nn as nn

from dfmscd.errors import ConfigError, UnknownArchitectureError
from dfmscd.models.tv import _resize_hook

DEFAULT_MIN_SIDE = 32
_MIN_SIDE_PREFIX: tuple[tuple[str, int], ...] = (("inception", 75),)
# Keys that would fetch or load pretrained weights, or turn the classifier into a feature
# extractor / change what the model returns, are never passed on. ``num_classes`` and
# ``in_chans`` come from the card.
_FORBIDDEN_KWARGS = frozenset({
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "checkpoint_path",
    "cache_dir", "features_only", "out_indices", "feature_cfg", "feature_cls", "num_classes", "in_chans",
    "weights", "model_args",
})


@lru_cache(maxsize=1)
def _names() -> frozenset[str]:
    import timm  # deferred on purpose: importing timm takes seconds

    return frozenset(timm.list_models())


def classification_models() -> list[str]:
    """The timm architecture names this installed timm can build (sorted)."""
    return sorted(_names())


def is_timm_model(name: str) -> bool:
    return name in _names()


@lru_cache(maxsize=4096)
def _default_cfg(name: str) -> tuple[tuple[int, ...] | None, bool, tuple[int, ...] | None]:
    from timm.models import get_pretrained_cfg  # deferred on purpose (slow timm import)

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None, False, None
    return (tuple(cfg.input_size) if cfg.input_size else None, bool(cfg.fixed_input_size),
            tuple(cfg.min_input_size) if cfg.min_input_size else None)


def input_side(name: str, image_size: int) -> int:
    """The side the model is fed (see the module docstring)."""
    input_size, fixed, min_input = _default_cfg(name)
    if fixed and input_size:
        return int(input_size[-1])
    side = DEFAULT_MIN_SIDE
    for prefix, s in _MIN_SIDE_PREFIX:
        if name.startswith(prefix):
            side = s
    if min_input:
        side = max(side, int(min_input[-1]))
    return max(int(image_size), side)


def check_timm_arguments(name: str, kwargs: dict[str, Any]) -> None:
    if "." in name or not is_timm_model(name):
        raise UnknownArchitectureError(
            f"unknown architecture 'timm/{name}'; run 'dfmscd architectures' for the list"
        )
    bad = _FORBIDDEN_KWARGS.intersection(kwargs)
    if bad:
        key = sorted(bad)[0]
        why = "it comes from the model card" if key in ("num_classes", "in_chans") else "no pretrained weights"
        raise ConfigError(f"timm/{name}: argument {key!r} is not allowed ({why})")


def create_timm_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    import timm  # deferred on purpose: importing timm takes seconds

    check_timm_arguments(name, kwargs)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, NotImplementedError) as exc:  # the model's own checks
        raise ConfigError(f"invalid arguments for timm/{name}: {exc}") from None
    side = input_side(name, image_size)
    model.register_forward_pre_hook(_resize_hook(side))
    model.dfmscd_input_side = side  # type: ignore[attr-defined]  # for introspection / docs
    return model


__all__ = ["DEFAULT_MIN_SIDE", "check_timm_arguments", "classification_models", "create_timm_model", "input_side",
           "is_timm_model"]
