"""The samples grid and the atomic JSON writer, on real files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dfmscd.report import MIN_CELL_PX, save_samples_png, to_jsonable, write_json_atomic


def _images(n: int, c: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, side, side), dtype=np.uint8)


@pytest.mark.parametrize("channels,side", [(1, 8), (3, 32), (3, 12)])
def test_grid_has_one_row_per_class_and_per_class_columns(tmp_path, channels, side):
    classes, per_class = 10, 4
    labels = np.repeat(np.arange(classes), per_class + 1)  # one spare image per class
    images = _images(len(labels), channels, side)
    out = tmp_path / "samples.png"

    layout = save_samples_png(images, labels, out, per_class=per_class)

    assert (layout.rows, layout.cols) == (classes, per_class)
    assert layout.cell >= MIN_CELL_PX and layout.cell == side * math.ceil(MIN_CELL_PX / side)
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.size == (layout.width, layout.height)
        assert png.height == classes * (layout.cell + 2) + 2
        assert png.width == layout.label_width + per_class * (layout.cell + 2) + 2
        grid = np.asarray(png.convert("RGB"))

    # The cell at (row r, col k) is the k-th image labelled r, nearest-upscaled.
    for row, col in [(0, 0), (3, 2), (9, 3)]:
        src = images[np.flatnonzero(labels == row)[col]]
        x, y = layout.cell_origin(row, col)
        tile = grid[y : y + layout.cell, x : x + layout.cell]
        expected = np.kron(src.transpose(1, 2, 0), np.ones((layout.scale, layout.scale, 1), dtype=np.uint8))
        if channels == 1:
            expected = np.repeat(expected, 3, axis=2)
        np.testing.assert_array_equal(tile, expected)


def test_missing_classes_leave_empty_cells_and_rows_follow_class_names(tmp_path):
    labels = np.array([0, 0, 2])  # class 1 never produced
    images = _images(3, 1, 8)
    layout = save_samples_png(images, labels, tmp_path / "g.png", per_class=2, class_names=["zero", "one", "two"])
    assert layout.rows == 3
    grid = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    x, y = layout.cell_origin(1, 0)
    assert (grid[y : y + layout.cell, x : x + layout.cell] == (90, 90, 90)).all()
    x, y = layout.cell_origin(2, 1)  # class 2 has only one image
    assert (grid[y : y + layout.cell, x : x + layout.cell] == (90, 90, 90)).all()


def test_large_images_are_not_upscaled_and_tensors_are_accepted(tmp_path):
    images = torch.from_numpy(_images(2, 3, 64))
    layout = save_samples_png(images, torch.tensor([0, 1]), tmp_path / "g.png", per_class=1)
    assert (layout.scale, layout.cell) == (1, 64)


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_samples_png(np.zeros((2, 1, 8, 8), np.float32), [0, 1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels"):
        save_samples_png(_images(2, 1, 8), [0], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_report_json_is_strict_and_atomic(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_json_atomic(path, {"loss": float("nan"), "hist": torch.tensor([3, 4]), "acc": np.float32(0.5)})
    data = json.loads(path.read_text())
    assert data == {"loss": None, "hist": [3, 4], "acc": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left behind


def test_to_jsonable_handles_nested_pydantic_and_inf():
    from dfmscd.config import Budget

    out = to_jsonable({"b": Budget(epochs=3), "x": [float("inf"), (1, 2)]})
    assert out == {"b": {"epochs": 3, "seconds": None}, "x": [None, [1, 2]]}
