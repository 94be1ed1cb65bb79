"""The model card: the JSON that makes a weights file self-describing.

Exactly these keys: ``architecture``, ``num_classes``, ``input_shape`` ([C, H, W]), ``mean``,
``std`` and the optional ``arch_kwargs`` and ``class_names``. Unknown keys are refused so that
a typo (``"mean "``) is an error rather than a silently ignored default.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dfmscd.errors import CardError

MIN_SIDE, MAX_SIDE = 8, 224
MAX_CLASSES = 10_000


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str = Field(min_length=1, max_length=128)
    num_classes: int = Field(ge=2, le=MAX_CLASSES)
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    class_names: tuple[str, ...] | None = None

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = v
        if c not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {c}")
        if h != w:
            raise ValueError(f"input must be square, got {h}x{w}")
        if not MIN_SIDE <= h <= MAX_SIDE:
            raise ValueError(f"input side must be between {MIN_SIDE} and {MAX_SIDE}, got {h}")
        return v

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError("must be finite numbers")
        return v

    @field_validator("arch_kwargs")
    @classmethod
    def _plain_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Only JSON scalars: arch_kwargs are passed to a constructor and must stay data.
        for key, val in v.items():
            if not isinstance(val, (bool, int, float, str)) or val is None:
                raise ValueError(f"arch_kwargs[{key!r}] must be a number, string or boolean")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        c = self.input_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean and std need one value per channel ({c}), got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries for {self.num_classes} classes")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True)


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def parse_card(data: str | bytes | dict[str, Any]) -> ModelCard:
    """Validate a card from JSON text or a dict; CardError names the first bad field."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CardError(f"model card is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CardError("model card must be a JSON object")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise CardError(f"invalid model card: {_describe(exc)}") from None


def read_card(path: str | Path) -> ModelCard:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CardError(f"cannot read model card {path}: {exc.strerror}") from None
    return parse_card(text)
