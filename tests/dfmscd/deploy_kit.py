"""A small trained student and image sets for the deployment tests (exports, INT8, verification,
evaluation): resnet8 on the 1x8x8 four-prototype task of ``synthetic_task``, trained for a few
steps (enough for confident, well-separated logits), cached for the test process."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import synthetic_task as task
from dfmscd.io.card import ModelCard
from dfmscd.models import create_model

CLASS_NAMES = ["a", "b", "c", "d"]


def card(class_names: bool = True) -> ModelCard:
    return task.card().model_copy(update={"class_names": tuple(CLASS_NAMES) if class_names else None})


def pixels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x 1 x 8 x 8 images of the task and their true labels."""
    x, y = task.sample(n, seed)
    return ((x * task.STD + task.MEAN) * 255).round().clamp(0, 255).to(torch.uint8).numpy(), y.numpy()


@functools.lru_cache(maxsize=1)
def _state() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet8", task.NUM_CLASSES, in_channels=1, image_size=task.SIDE)
        model.train()
        for step in range(15):  # plain SGD by hand: torch.optim's first use imports torch._dynamo (seconds)
            x, y = task.sample(64, seed=20_000 + step)
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    return {k: v.clone() for k, v in model.state_dict().items()}


def student() -> nn.Module:
    model = create_model("resnet8", task.NUM_CLASSES, in_channels=1, image_size=task.SIDE)
    model.load_state_dict(_state())
    return model.eval()
