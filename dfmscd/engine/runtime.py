"""Device choice, seeding, and RNG state as plain tensors/lists (checkpoint-safe)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from dfmscd.errors import CheckpointError, ConfigError


def resolve_device(spec: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; an unavailable CUDA device is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available on this machine")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


def has_depthwise_conv(module: torch.nn.Module) -> bool:
    """True when a 2-D convolution has one group per input channel (MobileNet-, ShuffleNet-style)."""
    return any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in module.modules())


# From this input side up, channels-last is the cheaper layout on a CPU too (docs/benchmarks.md, "Speed").
CPU_CHANNELS_LAST_MIN_SIDE = 16


def network_memory_format(module: torch.nn.Module, setting: bool | None, device: torch.device,
                          image_size: int = 0) -> torch.memory_format:
    """The layout a network's weights (hence its activations) are kept in.

    ``setting`` True/False forces it; None picks channels-last on CUDA, and on CPU for networks with
    depthwise convolutions (oneDNN's channels-last kernels made a MobileNetV2 forward+backward 2.3x
    cheaper at 8x8) and for inputs of ``CPU_CHANNELS_LAST_MIN_SIDE`` and more, where one-thread
    forward+backward passes at batch 64 on a 2-core AMD EPYC were 10-40% cheaper in channels-last
    (resnet20 at 3x32x32: 284 against 354 ms; vgg8 at 1x28x28: 347 against 404 ms) and none dearer,
    while at 8x8 plain convolutions gained nothing or lost.
    """
    if setting is None:
        setting = device.type == "cuda" or has_depthwise_conv(module) or image_size >= CPU_CHANNELS_LAST_MIN_SIDE
    return torch.channels_last if setting else torch.contiguous_format


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """RNG states of python, numpy, torch CPU (and CUDA when used) as tensors and lists only."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    try:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"]), py["gauss"]))
        npst = state["numpy"]
        np.random.set_state(
            (
                npst["kind"],
                npst["keys"].numpy().astype(np.uint32),
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached"]),
            )
        )
        torch.set_rng_state(state["torch"])
        if device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint has an unreadable RNG state: {exc}") from None
