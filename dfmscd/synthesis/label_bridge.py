"""Which class each synthesized image is asked to be (DF-MSCD 1, "unbiased" label bridging).

Fast-DFKD draws the requested labels i.i.d. per step, so the pool drifts toward the classes the
generator finds easy. ``LabelBridge`` instead reads labels from one persistent queue made of
concatenated random permutations of the classes, carried over between synthesis steps (and
checkpoints): after any number of labels taken, every class has been requested ``q`` or ``q+1``
times, so the *requested* labels are balanced to within one per class after every step.

The correction (``correction`` ∈ [0, 1]) never touches the requests: earlier versions steered a
share of each batch to the classes the teacher recognised least, which left the requests only
about 0.5 balanced and did not fix the pool. Instead ``class_weights`` turns the pool's
teacher-argmax histogram into per-class weights of the generator's class (one-hot) loss, so
the requested images of an under-recognised class pull harder toward being recognised:

    w_c = (1 − a) + a · C · d_c / Σ_j d_j,     d_c = max(h) − h_c

which averages to 1 over classes (the loss keeps its scale) and is all ones for a balanced pool.
"""

from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor


def allocate_deficit(histogram: Sequence[int], n: int) -> list[int]:
    """Split ``n`` requests over classes in proportion to ``max(h) − h_c`` (largest remainder)."""
    h = torch.tensor(list(histogram), dtype=torch.float64)
    deficit = h.max() - h
    total = float(deficit.sum())
    if n <= 0 or total <= 0:
        return [0] * len(histogram)
    share = deficit * (n / total)
    counts = share.floor().long()
    remainder = n - int(counts.sum())
    if remainder:
        # stable sort: ties go to the lower class index, which keeps the result deterministic
        order = torch.argsort(share - counts, descending=True, stable=True)
        counts[order[:remainder]] += 1
    return counts.tolist()


def class_weights(histogram: Sequence[int], correction: float) -> Tensor:
    """Per-class weights of the class loss from the pool's teacher-argmax histogram (see module)."""
    h = torch.tensor(list(histogram), dtype=torch.float64)
    deficit = h.max() - h
    total = float(deficit.sum())
    if correction <= 0 or total <= 0:
        return torch.ones(len(histogram), dtype=torch.float32)
    w = (1.0 - correction) + correction * len(histogram) * deficit / total
    return w.to(torch.float32)


class LabelBridge:
    """Balanced label queue plus a deficit-driven correction stream."""

    def __init__(self, num_classes: int, correction: float = 0.0, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError("need at least two classes")
        if not 0.0 <= correction <= 1.0:
            raise ValueError("correction must be in [0, 1]")
        self.num_classes, self.correction = num_classes, correction
        self.rng = torch.Generator().manual_seed(seed)
        self.queue = torch.empty(0, dtype=torch.int64)
        self.taken = torch.zeros(num_classes, dtype=torch.int64)  # queue output so far

    def take(self, n: int) -> Tensor:
        """Next ``n`` labels of the balanced queue."""
        while self.queue.numel() < n:
            self.queue = torch.cat([self.queue, torch.randperm(self.num_classes, generator=self.rng)])
        out, self.queue = self.queue[:n].clone(), self.queue[n:].clone()
        self.taken += torch.bincount(out, minlength=self.num_classes)
        return out

    def next(self, n: int, recognised: Sequence[int] | None = None) -> Tensor:
        """Labels for one synthesis batch: always the balanced queue (``recognised`` is unused)."""
        return self.take(n)

    def loss_weights(self, recognised: Sequence[int] | None) -> Tensor | None:
        """Class-loss weights for the next batch (None: unweighted, e.g. an empty pool)."""
        if self.correction <= 0 or recognised is None or sum(recognised) <= 0:
            return None
        return class_weights(recognised, self.correction)

    def state_dict(self) -> dict:
        return {"queue": self.queue.clone(), "taken": self.taken.clone(), "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        taken = state["taken"]
        if taken.numel() != self.num_classes:
            raise ValueError("checkpoint label queue has a different number of classes")
        self.queue, self.taken = state["queue"].clone().long(), taken.clone().long()
        self.rng.set_state(state["rng"])


class IIDLabels:
    """The Fast-DFKD baseline: labels drawn uniformly and independently for every batch."""

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        self.num_classes = num_classes
        self.rng = torch.Generator().manual_seed(seed)

    def next(self, n: int, recognised: Sequence[int] | None = None) -> Tensor:
        return torch.randint(0, self.num_classes, (n,), generator=self.rng)

    def loss_weights(self, recognised: Sequence[int] | None) -> Tensor | None:
        return None

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.set_state(state["rng"])


def make_label_source(num_classes: int, bridging: bool, correction: float, seed: int) -> LabelBridge | IIDLabels:
    return LabelBridge(num_classes, correction, seed) if bridging else IIDLabels(num_classes, seed)
