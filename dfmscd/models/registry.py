"""A model zoo in the manner of timm: architectures register themselves by name.

``create_model(name, num_classes, in_channels, image_size)`` is the only constructor the rest of
the code uses, so a model card's ``architecture`` string is all that is needed to rebuild a net.
Names under ``tv/`` are built from torchvision and names under ``timm/`` from timm, on demand
(no pretrained weights, ever; both libraries are imported only when such a name is used).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

from dfmscd.errors import ConfigError, UnknownArchitectureError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
TV_PREFIX = "tv/"
TIMM_PREFIX = "timm/"


def register_model(fn: ModelFactory) -> ModelFactory:
    """Decorator: register ``fn`` under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def _tv_names() -> list[str]:
    from dfmscd.models import tv  # late: torchvision import is slow

    return [TV_PREFIX + n for n in tv.classification_models()]


def _timm_names() -> list[str]:
    from dfmscd.models import timm_zoo  # late: the timm import is slow (seconds)

    return [TIMM_PREFIX + n for n in timm_zoo.classification_models()]


def list_models(include_torchvision: bool = True, include_timm: bool = False) -> list[str]:
    """Zoo names (sorted), then the ``tv/`` names this torchvision can build, then (opt-in) the
    ``timm/`` names this timm can build.

    timm is opt-in: it adds ~1400 names and importing it costs seconds, which callers that list
    the zoo at start-up (the API's warm-up, the worker's preload, ``dfmscd architectures``) must
    not pay. ``is_model`` / ``create_model`` accept ``timm/`` names either way.
    """
    names = sorted(_REGISTRY)
    return names + (_tv_names() if include_torchvision else []) + (_timm_names() if include_timm else [])


def is_model(name: str) -> bool:
    if name in _REGISTRY:
        return True
    if name.startswith(TIMM_PREFIX):
        from dfmscd.models import timm_zoo

        return timm_zoo.is_timm_model(name[len(TIMM_PREFIX):])
    return name.startswith(TV_PREFIX) and name in _tv_names()


def create_model(
    name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **kwargs: Any
) -> nn.Module:
    """Build a freshly initialised model; UnknownArchitectureError / ConfigError on bad input."""
    check_model_arguments(name, num_classes, in_channels, image_size, **kwargs)
    if name.startswith(TV_PREFIX):
        from dfmscd.models import tv

        return tv.create_tv_model(name[len(TV_PREFIX):], num_classes, in_channels, image_size, **kwargs)
    if name.startswith(TIMM_PREFIX):
        from dfmscd.models import timm_zoo

        return timm_zoo.create_timm_model(name[len(TIMM_PREFIX):], num_classes, in_channels, image_size, **kwargs)
    try:
        return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    except ValueError as exc:  # the architectures' own range checks (depth, width_mult, ...)
        raise ConfigError(f"invalid arguments for {name}: {exc}") from None


def check_model_arguments(
    name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **kwargs: Any
) -> None:
    """Cheap pre-flight for ``create_model`` (no model is built): name, sizes, keyword names."""
    _check_sizes(name, num_classes, in_channels, image_size)
    if name.startswith(TV_PREFIX):
        from dfmscd.models import tv

        tv.check_tv_arguments(name[len(TV_PREFIX):], kwargs)
        return
    if name.startswith(TIMM_PREFIX):
        from dfmscd.models import timm_zoo

        timm_zoo.check_timm_arguments(name[len(TIMM_PREFIX):], kwargs)
        return
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; run 'dfmscd architectures' for the list"
        ) from None
    try:
        inspect.signature(factory).bind(num_classes=num_classes, in_channels=in_channels,
                                        image_size=image_size, **kwargs)
    except TypeError as exc:  # unknown kwargs, e.g. from a card's arch_kwargs
        raise ConfigError(f"invalid arguments for {name}: {exc}") from None


def _check_sizes(name: str, num_classes: int, in_channels: int, image_size: int) -> None:
    for label, value, lo, hi in (("num_classes", num_classes, 1, 100_000), ("in_channels", in_channels, 1, 64),
                                 ("image_size", image_size, 1, 4096)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{name}: {label} must be an integer in [{lo}, {hi}], got {value!r}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
