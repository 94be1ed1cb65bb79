"""DF-MSCD 3: a mixture of K generators writing into one pool.

Each generator has its own meta-optimiser and an adversarial partner student (generator k ↔
student k mod S), so with K = S every student gets a generator that hunts for its own
weaknesses. The last batch summary of each generator is kept so that the others can be pushed
away from it (the diversity term). One scratch generator per architecture serves as the fast
(inner-loop) copy: generators of a mixture may differ (class-conditional or not), and those
that share an architecture share the scratch copy.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch

from dfmscd.synthesis.generator import Generator

if TYPE_CHECKING:
    from dfmscd.config import DistillConfig

Tensor = torch.Tensor


def resolve_num_generators(num_generators: int | None, num_students: int) -> int:
    """``None`` means one generator per student."""
    return num_students if num_generators is None else num_generators


def conditional_generators(config: "DistillConfig", num_generators: int) -> list[bool]:
    """Which generators of the mixture are class-conditional: all of them when
    ``conditional_generator`` is on, except the last ``unconditional_generators`` (at most all
    but one: the conditional one is what keeps every class coming); none when it is off."""
    if not config.conditional_generator:
        return [False] * num_generators
    free = min(config.unconditional_generators, num_generators - 1)
    return [k < num_generators - free for k in range(num_generators)]


def partner_students(num_generators: int, num_students: int) -> list[int]:
    return [k % num_students for k in range(num_generators)]


class MixtureOfGenerators:
    def __init__(
        self,
        num_generators: int,
        num_students: int,
        make_generator: Callable[[int], Generator],
        meta_lr: float,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_generators < 1 or num_students < 1:
            raise ValueError("need at least one generator and one student")
        self.meta_lr, self.device = meta_lr, torch.device(device)
        self.generators = [make_generator(k).to(self.device) for k in range(num_generators)]
        self.partners = partner_students(num_generators, num_students)
        self.meta_optimizers = [self._meta_optimizer(g) for g in self.generators]
        self._fast = self._scratch_copies(self.generators)
        self.summaries: list[Tensor | None] = [None] * num_generators

    @staticmethod
    def _scratch_copies(generators: list[Generator]) -> list[Generator]:
        """One scratch copy per architecture (same parameter names and shapes), shared by the
        generators that have it; worked out once here rather than on every synthesis step."""
        by_shape: dict[tuple, Generator] = {}
        copies = []
        for g in generators:
            shape = tuple((name, tuple(t.shape)) for name, t in g.state_dict().items())
            if shape not in by_shape:
                by_shape[shape] = copy.deepcopy(g)
            copies.append(by_shape[shape])
        return copies

    def fast_for(self, k: int) -> Generator:
        """The scratch (inner-loop) copy for generator k (synthesis loads k's weights into it)."""
        return self._fast[k]

    def _meta_optimizer(self, g: Generator) -> torch.optim.Adam:
        # Fast-DFKD: Adam with beta1 = 0.5, meta step lr_g × inner steps (passed in as meta_lr).
        return torch.optim.Adam(g.parameters(), lr=self.meta_lr, betas=(0.5, 0.999))

    def __len__(self) -> int:
        return len(self.generators)

    def other_summaries(self, k: int) -> list[Tensor]:
        return [s for j, s in enumerate(self.summaries) if j != k and s is not None]

    def reset(self, k: int, first_layer_only: bool = False) -> None:
        """Re-initialise generator k (all of it with a fresh meta-optimiser, or its first layer)."""
        g = self.generators[k]
        if first_layer_only:
            g.reset_first_layer()
            return
        g.reset_all()
        self.meta_optimizers[k] = self._meta_optimizer(g)
        self.summaries[k] = None

    def state_dict(self) -> dict:
        return {
            "generators": [g.state_dict() for g in self.generators],
            "meta_optimizers": [o.state_dict() for o in self.meta_optimizers],
            "summaries": [None if s is None else s.detach().cpu() for s in self.summaries],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["generators"]) != len(self.generators):
            raise ValueError(f"checkpoint has {len(state['generators'])} generators, configuration has {len(self.generators)}")
        for g, o, gs, os_ in zip(self.generators, self.meta_optimizers, state["generators"], state["meta_optimizers"]):
            g.load_state_dict(gs)
            o.load_state_dict(os_)
        self.summaries = [None if s is None else s.to(self.device) for s in state["summaries"]]
