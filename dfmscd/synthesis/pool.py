"""A bounded pool of synthesized images in uint8, shared by all generators.

Storage grows geometrically up to ``capacity`` images (so a small run does not allocate the
whole capacity up front) and never beyond. When full, ``fifo`` overwrites the oldest image and
``reservoir`` keeps a uniform sample of everything ever added (Vitter's algorithm R). Each
image carries its requested label and the teacher's argmax on it, so the engine can report the
class balance of what the students actually learn from, and sample KD batches balanced over
the teacher's classes (``sample_balanced``).

The pool can live on an accelerator (``device``) when it fits: images are stored there and
batches are gathered there, while every random draw still comes from the pool's own CPU
generator, so the indices drawn (and a CPU run's results) do not depend on where it lives.
"""

from __future__ import annotations

from typing import Literal

import torch

Tensor = torch.Tensor


class ImagePool:
    def __init__(
        self,
        capacity: int,
        image_shape: tuple[int, int, int],
        num_classes: int,
        eviction: Literal["fifo", "reservoir"] = "fifo",
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise ValueError("pool capacity must be >= 1")
        if eviction not in ("fifo", "reservoir"):
            raise ValueError(f"unknown eviction policy {eviction!r}")
        self.capacity, self.image_shape, self.eviction = capacity, tuple(image_shape), eviction
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.images = torch.empty((0, *image_shape), dtype=torch.uint8, device=self.device)
        self.labels = torch.empty(0, dtype=torch.int64)
        self.teacher_argmax = torch.empty(0, dtype=torch.int64)
        self.size = 0
        self.seen = 0  # images ever offered
        self.next_slot = 0  # fifo write position once full
        self.rng = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def _reserve(self, needed: int) -> None:
        allocated = self.images.shape[0]
        if needed <= allocated:
            return
        new = min(self.capacity, max(needed, 2 * allocated, 64))
        grow = new - allocated
        self.images = torch.cat([self.images, torch.empty((grow, *self.image_shape), dtype=torch.uint8, device=self.device)])
        self.labels = torch.cat([self.labels, torch.full((grow,), -1, dtype=torch.int64)])
        self.teacher_argmax = torch.cat([self.teacher_argmax, torch.full((grow,), -1, dtype=torch.int64)])

    def add(self, images: Tensor, labels: Tensor, teacher_argmax: Tensor) -> None:
        """Add a batch (uint8 N×C×H×W on any device); evicts per the policy once full."""
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"pool expects uint8 N×{self.image_shape}, got {images.dtype} {tuple(images.shape)}")
        images, labels, argmax = images.to(self.device), labels.cpu().long(), teacher_argmax.cpu().long()
        n = images.shape[0]
        fill = min(n, self.capacity - self.size)
        slots = torch.full((n,), -1, dtype=torch.int64)  # -1: discarded (reservoir only)
        slots[:fill] = torch.arange(self.size, self.size + fill)
        self.size += fill
        rest = n - fill
        if rest and self.eviction == "fifo":
            slots[fill:] = (self.next_slot + torch.arange(rest)) % self.capacity
            self.next_slot = (self.next_slot + rest) % self.capacity
        elif rest:  # algorithm R: the t-th image (0-based) replaces slot j ~ U{0..t} if j < capacity
            t = self.seen + fill + torch.arange(rest, dtype=torch.float64)
            u = torch.rand(rest, generator=self.rng, dtype=torch.float64)
            j = (u * (t + 1)).floor().long()
            slots[fill:] = torch.where(j < self.capacity, j, torch.full_like(j, -1))
        self.seen += n
        self._reserve(self.size)
        # When two images of one batch land in the same slot the later one wins, exactly as
        # one-by-one adds would; keep only the last occurrence of each slot.
        placed = {int(slot): i for i, slot in enumerate(slots.tolist()) if slot >= 0}
        if not placed:
            return
        idx = torch.tensor(list(placed.keys()), dtype=torch.int64)
        src = torch.tensor(list(placed.values()), dtype=torch.int64)
        self.images[idx.to(self.device)] = images[src.to(self.device)]
        self.labels[idx] = labels[src]
        self.teacher_argmax[idx] = argmax[src]

    def sample_indices(self, n: int) -> Tensor:
        """``n`` indices drawn uniformly with replacement from the pool's own generator."""
        if self.size == 0:
            raise RuntimeError("the pool is empty")
        return torch.randint(0, self.size, (n,), generator=self.rng)

    def balanced_weights(self) -> Tensor:
        """Sampling weight of each pooled image: 1 / (images of its teacher class), float64 CPU.

        Every class the teacher recognises in the pool then has the same total weight, so a
        batch drawn with these weights is class-balanced in expectation whatever the pool's
        histogram (a class absent from the pool cannot be sampled, of course).
        """
        argmax = self.teacher_argmax[: self.size]
        counts = torch.bincount(argmax, minlength=self.num_classes).to(torch.float64)
        return 1.0 / counts[argmax]

    def sample_balanced(self, n: int) -> Tensor:
        """``n`` indices with replacement, balanced over the teacher's classes (pool generator)."""
        if self.size == 0:
            raise RuntimeError("the pool is empty")
        return torch.multinomial(self.balanced_weights(), n, replacement=True, generator=self.rng)

    def gather(self, idx: Tensor) -> Tensor:
        """The uint8 images at ``idx`` (CPU indices), on the pool's device."""
        return self.images[idx.to(self.device)]

    def histogram(self, which: Literal["labels", "teacher_argmax"]) -> list[int]:
        values = (self.labels if which == "labels" else self.teacher_argmax)[: self.size]
        return torch.bincount(values, minlength=self.num_classes).tolist()

    def state_dict(self) -> dict:
        return {
            "images": self.images[: self.size].cpu().clone(),
            "labels": self.labels[: self.size].clone(),
            "teacher_argmax": self.teacher_argmax[: self.size].clone(),
            "capacity": self.capacity,
            "seen": self.seen,
            "next_slot": self.next_slot,
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        images = state["images"]
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError("checkpoint pool images do not match the teacher's input shape")
        if int(state["capacity"]) != self.capacity or images.shape[0] > self.capacity:
            raise ValueError("checkpoint pool capacity differs from the configuration")
        self.images = images.clone().to(self.device)
        self.labels = state["labels"].clone().long()
        self.teacher_argmax = state["teacher_argmax"].clone().long()
        self.size = images.shape[0]
        self.seen, self.next_slot = int(state["seen"]), int(state["next_slot"])
        self.rng.set_state(state["rng"])
