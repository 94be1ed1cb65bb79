"""Run artefacts a person looks at: the samples grid PNG and the JSON report.

Both are written atomically (temp file in the same directory + ``os.replace``) so that a run
interrupted mid-write, or a reader polling the output folder, never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dfmscd.atomic import atomic_path

MIN_CELL_PX = 32  # small inputs (8x8 digits) are upscaled to at least this many pixels
PAD_PX = 2
BACKGROUND = (40, 40, 40)
EMPTY_CELL = (90, 90, 90)
TEXT_COLOUR = (235, 235, 235)


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a samples grid; returned so callers (and tests) need not re-derive it."""

    rows: int  # classes shown, in class order
    cols: int  # images per class
    cell: int  # side of one (upscaled) image in pixels
    scale: int  # integer nearest-neighbour upscaling factor
    label_width: int  # left column holding the class names
    width: int
    height: int

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left (x, y) pixel of the image at ``row``, ``col``."""
        return (self.label_width + PAD_PX + col * (self.cell + PAD_PX), PAD_PX + row * (self.cell + PAD_PX))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these artefacts are meant to be read by others


def _to_uint8_images(images: Any) -> np.ndarray:
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"images must be N x C x H x W with C in (1, 3), got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    return arr


def save_samples_png(
    images_uint8: Any,
    labels: Any,
    path: str | Path,
    per_class: int = 8,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    max_classes: int = 100,
) -> GridLayout:
    """Write a grid of synthesized images, one row per class, ``per_class`` columns.

    ``labels`` says which row an image belongs to (typically the teacher's argmax, which is
    what the picture is meant to show). Rows cover classes ``0..num_classes-1`` (default:
    ``len(class_names)``, else ``max(labels)+1``) up to ``max_classes``; a class with fewer
    images than ``per_class`` shows empty grey cells, which makes a collapsed class visible.
    """
    from PIL import Image, ImageDraw, ImageFont

    arr = _to_uint8_images(images_uint8)
    lab = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).astype(np.int64).reshape(-1)
    if lab.shape[0] != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} images but {lab.shape[0]} labels")
    if per_class < 1:
        raise ValueError("per_class must be >= 1")
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else (int(lab.max()) + 1 if lab.size else 1)
    rows = max(1, min(num_classes, max_classes))
    _, channels, side, _ = arr.shape
    scale = max(1, math.ceil(MIN_CELL_PX / side))
    cell = side * scale

    font = ImageFont.load_default()
    names = [str(class_names[r]) if class_names is not None and r < len(class_names) else str(r) for r in range(rows)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(math.ceil(probe.textlength(n, font=font))) for n in names)
    label_width = text_w + 2 * PAD_PX + 2

    width = label_width + PAD_PX + per_class * (cell + PAD_PX)
    height = PAD_PX + rows * (cell + PAD_PX)
    layout = GridLayout(rows, per_class, cell, scale, label_width, width, height)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row in range(rows):
        idx = np.flatnonzero(lab == row)[:per_class]
        _, y0 = layout.cell_origin(row, 0)
        draw.text((PAD_PX, y0 + cell // 2), names[row], fill=TEXT_COLOUR, font=font, anchor="lm")
        for col in range(per_class):
            x, y = layout.cell_origin(row, col)
            if col >= len(idx):
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=EMPTY_CELL)
                continue
            img = arr[idx[col]]
            hwc = np.repeat(img, 3, axis=0) if channels == 1 else img
            tile = Image.fromarray(np.ascontiguousarray(hwc.transpose(1, 2, 0)), mode="RGB")
            if scale > 1:
                tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (x, y))

    _atomic_write(Path(path), lambda p: canvas.save(p, format="PNG"))
    return layout


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types only: tensors/arrays to lists, NaN/Inf to None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):  # pydantic models (config, cards)
        return to_jsonable(obj.model_dump(mode="json"))
    if hasattr(obj, "detach"):  # torch tensors
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write strict, indented JSON atomically."""
    text = json.dumps(to_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    _atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


def write_text_atomic(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


__all__ = ["GridLayout", "save_samples_png", "to_jsonable", "write_json_atomic", "write_text_atomic"]
