"""The DF-MSCD engine: ``Distiller(...).run() -> DistillResult``."""

from dfmscd.engine.distiller import Distiller
from dfmscd.engine.runtime import resolve_device, seed_everything
from dfmscd.engine.samples import pick_samples
from dfmscd.engine.types import DistillResult, Event, StudentSpec

__all__ = [
    "Distiller",
    "DistillResult",
    "Event",
    "StudentSpec",
    "pick_samples",
    "resolve_device",
    "seed_everything",
]
