"""DeepInversion's BatchNorm-statistics loss, read from forward hooks on the frozen teacher.

Every BN layer of a trained teacher remembers the mean and variance of its input over the real
training data (``running_mean`` / ``running_var``). Synthetic batches that reproduce those
statistics at every layer look like the training data to the teacher. Fast-DFKD compares a
*blend* of the current batch with an exponential average of past batches
(``m·past + (1−m)·current``), so that the pool as a whole, not each batch, has to match: that
leaves room for individual batches (and, here, individual generators) to differ.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfmscd.models.layers import tracked_batchnorms

Tensor = torch.Tensor


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over every dim but 1 (what BN normalises with)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    return flat.mean(dim=1), flat.var(dim=1, unbiased=False)


class BatchNormStatsHook:
    """Forward hook on one BN layer: batch statistics, blended loss term, EMA of past batches."""

    def __init__(self, module: _BatchNorm, momentum: float, on_fire: Callable[["BatchNormStatsHook"], None] | None = None) -> None:
        self.module = module
        self.on_fire = on_fire
        self.momentum = momentum
        self.enabled = False
        self.loss: Tensor | None = None
        self.current: tuple[Tensor, Tensor] | None = None
        self.ema: tuple[Tensor, Tensor] | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not self.enabled:
            return
        mean, var = batch_stats(inputs[0])
        self.current = (mean, var)
        if self.ema is not None:
            m = self.momentum
            mean = m * self.ema[0] + (1 - m) * mean
            var = m * self.ema[1] + (1 - m) * var
        rm, rv = self.module.running_mean, self.module.running_var
        self.loss = torch.linalg.vector_norm(mean - rm) + torch.linalg.vector_norm(var - rv)
        if self.on_fire is not None:
            self.on_fire(self)

    def update_ema(self) -> None:
        """Fold the last batch's (detached) statistics into the running blend of past batches."""
        if self.current is None:
            return
        mean, var = (t.detach() for t in self.current)
        if self.ema is None:
            self.ema = (mean.clone(), var.clone())
        else:
            m = self.momentum
            self.ema = (m * self.ema[0] + (1 - m) * mean, m * self.ema[1] + (1 - m) * var)

    def normalised_mean(self) -> Tensor | None:
        """The last batch's mean, standardised by the layer's running statistics."""
        if self.current is None:
            return None
        eps = self.module.eps
        return (self.current[0] - self.module.running_mean) / torch.sqrt(self.module.running_var + eps)

    def remove(self) -> None:
        self._handle.remove()


class TeacherBNHooks:
    """One ``BatchNormStatsHook`` per teacher BN layer; active only inside ``active()``."""

    def __init__(self, teacher: nn.Module, momentum: float) -> None:
        self._last_fired: BatchNormStatsHook | None = None
        self.hooks = [
            BatchNormStatsHook(m, momentum, on_fire=self._remember_last) for m in tracked_batchnorms(teacher)
        ]

    def _remember_last(self, hook: BatchNormStatsHook) -> None:
        self._last_fired = hook

    def __len__(self) -> int:
        return len(self.hooks)

    @contextmanager
    def active(self) -> Iterator["TeacherBNHooks"]:
        for h in self.hooks:
            h.enabled, h.loss, h.current = True, None, None
        self._last_fired = None
        try:
            yield self
        finally:
            for h in self.hooks:
                h.enabled = False

    def loss(self) -> Tensor:
        """Sum over layers of the blended mean/variance distance from the last forward."""
        terms = [h.loss for h in self.hooks if h.loss is not None]
        if not terms:
            raise RuntimeError("no BatchNorm statistics recorded: run the teacher inside active()")
        return torch.stack(terms).sum()

    def feature_summary(self) -> Tensor:
        """Standardised mean input of the deepest BN layer run last: a cheap teacher-feature summary."""
        if self._last_fired is None:
            raise RuntimeError("no BatchNorm statistics recorded: run the teacher inside active()")
        summary = self._last_fired.normalised_mean()
        assert summary is not None
        return summary

    def update_ema(self) -> None:
        for h in self.hooks:
            h.update_ema()

    def state_dict(self) -> dict[str, list[Tensor | None]]:
        return {
            "ema_mean": [None if h.ema is None else h.ema[0].cpu() for h in self.hooks],
            "ema_var": [None if h.ema is None else h.ema[1].cpu() for h in self.hooks],
        }

    def load_state_dict(self, state: dict[str, list[Tensor | None]]) -> None:
        means, vars_ = state["ema_mean"], state["ema_var"]
        if len(means) != len(self.hooks) or len(vars_) != len(self.hooks):
            raise ValueError(f"checkpoint has BN statistics for {len(means)} layers, teacher has {len(self.hooks)}")
        for h, m, v in zip(self.hooks, means, vars_):
            dev = h.module.running_mean.device
            h.ema = None if m is None or v is None else (m.to(dev), v.to(dev))

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
