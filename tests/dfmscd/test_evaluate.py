"""dfmscd.evaluate: reading labelled .npz files with the card's normalisation, and accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from dfmscd.evaluate import LabelledDataError, evaluate, evaluate_model_file, predict, read_labelled_npz
from dfmscd.io import parse_card, save_model
from dfmscd.models import create_model

GRAY = parse_card({"architecture": "resnet8", "num_classes": 4, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]})
RGB = parse_card({"architecture": "resnet8", "num_classes": 4, "input_shape": [3, 8, 8],
                  "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]})


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def refused(call, *fragments: str) -> None:
    with pytest.raises(LabelledDataError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_uint8_is_scaled_then_normalised_by_hand(tmp_path: Path) -> None:
    pixels = _pixels((3, 3, 8, 8))
    x, y = read_labelled_npz(_npz(tmp_path / "d.npz", x=pixels, y=np.array([0, 1, 3])), RGB)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 8, 8)
    assert y.tolist() == [0, 1, 3] and y.dtype == torch.int64
    # channel 2: (p / 255 - 0.3) / 2.0
    assert x[1, 2, 4, 5].item() == pytest.approx((pixels[1, 2, 4, 5] / 255 - 0.3) / 2.0, abs=1e-6)
    assert x[0, 0, 0, 0].item() == pytest.approx((pixels[0, 0, 0, 0] / 255 - 0.1) / 0.5, abs=1e-6)


def test_layouts_and_float_input_agree(tmp_path: Path) -> None:
    nchw = _pixels((5, 3, 8, 8), seed=1)
    y = np.arange(5) % 4
    ref, _ = read_labelled_npz(_npz(tmp_path / "a.npz", x=nchw, y=y), RGB)
    nhwc, _ = read_labelled_npz(_npz(tmp_path / "b.npz", x=nchw.transpose(0, 2, 3, 1), y=y), RGB)
    floats, _ = read_labelled_npz(_npz(tmp_path / "c.npz", x=nchw.astype(np.float64) / 255, y=y), RGB)
    assert torch.equal(ref, nhwc)
    assert torch.allclose(ref, floats, atol=1e-5)
    gray = _pixels((5, 8, 8), seed=2)
    a, _ = read_labelled_npz(_npz(tmp_path / "g1.npz", x=gray, y=y), GRAY)
    b, _ = read_labelled_npz(_npz(tmp_path / "g2.npz", x=gray[:, None], y=y), GRAY)
    c, _ = read_labelled_npz(_npz(tmp_path / "g3.npz", x=gray[..., None], y=y), GRAY)
    assert a.shape == (5, 1, 8, 8) and torch.equal(a, b) and torch.equal(a, c)


def test_bad_files_are_refused_with_reasons(tmp_path: Path) -> None:
    y = np.zeros(2, dtype=np.int64)
    refused(lambda: read_labelled_npz(_npz(tmp_path / "s.npz", x=_pixels((2, 3, 16, 16)), y=y), RGB),
            "(2, 3, 16, 16)", "N x 3 x 8 x 8")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "g.npz", x=_pixels((2, 8, 8)), y=y), RGB), "(2, 8, 8)")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "f.npz", x=np.full((2, 8, 8), 255.0, np.float32), y=y), GRAY),
            "float x must be in [0, 1]", "found 255..255")
    nan = np.zeros((2, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    refused(lambda: read_labelled_npz(_npz(tmp_path / "n.npz", x=nan, y=y), GRAY), "NaN")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "i.npz", x=_pixels((2, 8, 8)).astype(np.int32), y=y), GRAY), "int32")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "l.npz", x=_pixels((2, 8, 8)), y=np.zeros(3, int)), GRAY),
            "y has shape (3,)", "expected (2,)")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "r.npz", x=_pixels((2, 8, 8)), y=np.array([0, 4])), GRAY),
            "labels must be in [0, 3]", "0..4")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "t.npz", x=_pixels((2, 8, 8)), y=np.array([0.0, 1.0])), GRAY),
            "integer class indices")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "m.npz", images=_pixels((2, 8, 8)), y=y), GRAY),
            "needs arrays 'x' and 'y'", "images")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "e.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, int)), GRAY),
            "no images")
    np.save(tmp_path / "plain.npy", _pixels((2, 8, 8)))
    refused(lambda: read_labelled_npz(tmp_path / "plain.npy", GRAY), "not an .npz")
    refused(lambda: read_labelled_npz(tmp_path / "absent.npz", GRAY), "not found")
    refused(lambda: read_labelled_npz(_npz(tmp_path / "big.npz", x=_pixels((2, 8, 8)), y=y), GRAY, max_bytes=64), "limit 64")


def test_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    x = np.empty(2, dtype=object)
    x[0], x[1] = Payload(), Payload()
    np.savez(tmp_path / "obj.npz", x=x, y=np.zeros(2, int))
    refused(lambda: read_labelled_npz(tmp_path / "obj.npz", GRAY), "unreadable .npz")
    assert not marker.exists()


class PixelArgmax(nn.Module):
    """Predicts the index of the largest of the first 4 pixels: accuracy can be computed by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4]


def test_accuracy_against_hand_count() -> None:
    x = torch.zeros(5, 1, 8, 8)
    for i, cls in enumerate([0, 1, 2, 3, 1]):
        x[i].view(-1)[cls] = 1.0
    y = torch.tensor([0, 1, 2, 0, 1])  # 4th is wrong
    assert evaluate(PixelArgmax(), GRAY, x, y) == pytest.approx(0.8)
    assert evaluate(PixelArgmax(), None, x, y, batch_size=2) == pytest.approx(0.8)
    assert predict(PixelArgmax(), x, batch_size=3).argmax(1).tolist() == [0, 1, 2, 3, 1]
    with pytest.raises(LabelledDataError, match="model expects"):
        evaluate(PixelArgmax(), RGB, x, y)
    with pytest.raises(LabelledDataError, match="same non-zero count"):
        evaluate(PixelArgmax(), GRAY, x, y[:3])


def test_evaluate_uses_eval_mode_and_restores_training() -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 4, 1, 8)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    model.train()
    a = evaluate(model, GRAY, x, y, batch_size=1)  # batch 1 would fail in train-mode BN at 1x1
    assert model.training
    assert a == evaluate(model.eval(), GRAY, x, y, batch_size=6)


def test_model_file_evaluation_matches_in_memory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 4, 1, 8).eval()
    pixels, y = _pixels((20, 8, 8), seed=3), np.random.default_rng(4).integers(0, 4, 20)
    npz = _npz(tmp_path / "test.npz", x=pixels, y=y)
    save_model(model, GRAY, tmp_path / "student.safetensors")
    result = evaluate_model_file(tmp_path / "student.safetensors", npz, batch_size=7)
    x, yt = read_labelled_npz(npz, GRAY)
    expected = (model(x).argmax(1) == yt).float().mean().item()
    assert result["n"] == 20 and result["architecture"] == "resnet8"
    assert result["accuracy"] == pytest.approx(expected)
