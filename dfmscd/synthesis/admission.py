"""Which synthesized images enter the pool: ``pool_admission="balanced"`` keeps the pool's
teacher-argmax balance (min/max) at or above a target by turning away images of classes that
are already ahead.

A conditional generator asked for balanced labels still over-produces the classes the teacher
finds easy (pool balance 0.58 over three 300 s digits runs, with the requests balanced to within
one per class). Re-weighting the class loss steers the requests but cannot guarantee the pool;
admission can. Turning images away wastes their synthesis, so a class that the generator never
produces must not starve the pool: every class may always hold ``floor`` images, and the floor
grows with everything synthesized (``leak`` of a fair share), so the pool keeps growing at a
known fraction of the synthesis rate whatever the teacher recognises.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

Tensor = torch.Tensor

BALANCE = 0.85  # the teacher-argmax balance admission keeps: the benchmark's target is >= 0.8 (docs/benchmarks.md)
LEAK = 0.5  # every class may also hold half its fair share of all synthesized images


def balanced_admission(counts: Sequence[int], argmax: Tensor, min_balance: float, floor: float) -> Tensor:
    """A keep-mask over ``argmax`` (the incoming images' teacher classes, in order): an image is kept
    when its class then holds at most ``max(floor, min(counts) / min_balance)`` images, the counts
    (the pool's teacher-argmax histogram) being updated image by image.

    Adding to the least-filled class only raises the minimum, so once the pool is past the floor its
    balance never falls below ``min_balance`` through admission."""
    if not 0.0 < min_balance <= 1.0:
        raise ValueError("min_balance must be in (0, 1]")
    n = [int(c) for c in counts]
    keep = []
    for c in argmax.tolist():
        cap = max(floor, min(n) / min_balance)
        ok = n[c] + 1 <= math.floor(cap + 1e-9)
        if ok:
            n[c] += 1
        keep.append(ok)
    return torch.tensor(keep, dtype=torch.bool)


def admission_floor(images_synthesized: int, num_classes: int, batch_size: int, leak: float) -> float:
    """Images every class may hold whatever the others hold: one batch's fair share, and ``leak``
    of a fair share of everything synthesized so far."""
    return max(batch_size / num_classes, leak * images_synthesized / num_classes)
