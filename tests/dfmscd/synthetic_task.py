"""A separable 8×8 toy task and a small BN teacher trained on it, for the engine tests.

Each class is a fixed random 1×8×8 prototype in [0, 1]; a sample is its prototype plus Gaussian
noise, clipped to [0, 1]. The teacher (resnet8 from the zoo) learns it to ~100% in a few dozen
steps, which gives the data-free distillation something real to transfer.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfmscd.io.card import ModelCard
from dfmscd.models import create_model

NUM_CLASSES = 4
SIDE = 8
MEAN, STD = 0.5, 0.5
NOISE = 0.25


def prototypes() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return (torch.rand(NUM_CLASSES, 1, SIDE, SIDE, generator=g) > 0.5).float()


def sample(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n normalised images and their labels, from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x01 = (prototypes()[y] + NOISE * torch.randn(n, 1, SIDE, SIDE, generator=g)).clamp(0, 1)
    return (x01 - MEAN) / STD, y


def card() -> ModelCard:
    return ModelCard(
        architecture="resnet8", num_classes=NUM_CLASSES, input_shape=(1, SIDE, SIDE), mean=(MEAN,), std=(STD,)
    )


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet8", NUM_CLASSES, in_channels=1, image_size=SIDE)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        for step in range(40):
            x, y = sample(64, seed=10_000 + step)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def teacher() -> nn.Module:
    """A freshly built teacher with the (cached) trained weights, in eval mode."""
    model = create_model("resnet8", NUM_CLASSES, in_channels=1, image_size=SIDE)
    model.load_state_dict(_trained_state())
    return model.eval()


def accuracy(model: nn.Module, n: int = 512, seed: int = 99) -> float:
    x, y = sample(n, seed)
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
