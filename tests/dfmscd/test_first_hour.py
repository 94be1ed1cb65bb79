"""The first hour of a new user, library side: one budget grammar, `dfmscd card`,
the BN-statistics vs card check, the dominant-student estimate, `evaluate --card`, ONNX metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from dfmscd.cli import main
from dfmscd.config import Budget, parse_budget
from dfmscd.costs import DOMINANT_SHARE, dominant_student_warning, estimate_cost, measure_kd_step_ms
from dfmscd.errors import ConfigError
from dfmscd.io import export_onnx, parse_card
from dfmscd.models import create_model
from dfmscd.normalisation import MEAN_WARN_THRESHOLD, check_normalisation, normalisation_warnings, sample_stats


# --- budgets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("300s", Budget(seconds=300)), ("300 s", Budget(seconds=300)), ("5m", Budget(seconds=300)),
    ("5 min", Budget(seconds=300)), ("90 Minutes", Budget(seconds=5400)), ("2h", Budget(seconds=7200)),
    ("1.5 hours", Budget(seconds=5400)), ("40e", Budget(epochs=40)), ("40 epochs", Budget(epochs=40)),
    ("1 epoch", Budget(epochs=1)), ({"seconds": 300}, Budget(seconds=300)), ({"epochs": 2}, Budget(epochs=2)),
])
def test_budget_forms_accepted(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("value, says", [
    ("300", "'300s' (seconds) or '300e' (epochs)"),  # a bare number is refused, never guessed
    (300, "'300s' (seconds) or '300e' (epochs)"),
    ("5x", "unknown unit 'x'"),
    ("soon", "epochs ('40e', '40 epochs')"),
    ("1.5e", "whole number"),
    ("0s", "greater than 0"),
    ({"epochs": 0}, "budget.epochs"),
    ({}, "exactly one"),
])
def test_budget_errors_show_the_expected_shape(value, says):
    with pytest.raises(ConfigError, match="budget") as info:
        parse_budget(value)
    assert says in str(info.value)


def test_cli_budget_uses_the_same_grammar(capsys, tmp_path):
    rc = main(["distill", "--teacher", __file__, "--card", __file__, "--student", "resnet8",
               "--budget", "300", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'300s' (seconds) or '300e' (epochs)" in err[0]


# --- mean/std from sample images ---------------------------------------------------------------

def test_stats_from_npz_and_folder_agree(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", x=x)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(x):
        Image.fromarray(img).save(folder / f"{i}.png")
    want_mean = (x / 255.0).mean(axis=(0, 1, 2))
    want_std = (x / 255.0).std(axis=(0, 1, 2))
    for source in (tmp_path / "s.npz", folder):
        s = sample_stats(source)
        assert s.channels == 3 and s.side == 8 and s.count == 20
        np.testing.assert_allclose(s.mean, want_mean, atol=1e-4)
        np.testing.assert_allclose(s.std, want_std, atol=1e-4)


def test_card_command_writes_a_valid_card(tmp_path, capsys):
    x = np.linspace(0, 1, 10 * 8 * 8, dtype=np.float32).reshape(10, 8, 8)  # greyscale N x H x W floats
    np.savez(tmp_path / "s.npz", x=x)
    out = tmp_path / "teacher.json"
    rc = main(["card", "--architecture", "resnet8", "--num-classes", "10", "--images", str(tmp_path / "s.npz"), "--out", str(out)])
    first = capsys.readouterr().err
    assert rc == 0, first
    assert "from 10 images" in first
    card = parse_card(out.read_text())
    assert card.input_shape == (1, 8, 8)
    assert card.mean == pytest.approx((float(x.mean()),), abs=1e-4) and card.std == pytest.approx((float(x.std()),), abs=1e-4)
    rc = main(["card", "--architecture", "resnet8", "--num-classes", "10", "--images", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "folder of .png/.jpg images, an .npz" in err[0] and "archive" in err[0]


# --- BN statistics against the card (hand-built case) -----------------------------------------

def _conv_bn(running_mean: float, running_var: float) -> nn.Module:
    """conv(1->2, 3x3, all weights 1/9, no bias) + BN: a constant input m gives m inside, less at the border."""
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 1 / 9)
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(running_mean)
    bn.running_var.fill_(running_var)
    return nn.Sequential(conv, bn, nn.Flatten(), nn.Linear(2 * 8 * 8, 10))


CARD_1x8 = parse_card({"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.3], "std": [0.4]})


def test_bn_check_estimates_the_input_mean():
    # 3x3 averaging with zero padding on 8x8: a constant input m averages to m * (mean coverage).
    coverage = float(_conv_bn(0, 1)[0](torch.ones(1, 1, 8, 8)).detach().mean())
    check = check_normalisation(_conv_bn(running_mean=2.0 * coverage, running_var=0.5), CARD_1x8)
    assert check.input_mean == pytest.approx((2.0,), abs=1e-5)
    warnings = check.warnings(CARD_1x8)
    assert len(warnings) == 1 and "mean ≈ [2.00]" in warnings[0] and "dfmscd card" in warnings[0]
    # the pixel mean it implies on the 0..1 scale: card mean + 2 std = 0.3 + 0.8
    assert "1.1" in warnings[0]


def test_bn_check_threshold():
    coverage = float(_conv_bn(0, 1)[0](torch.ones(1, 1, 8, 8)).detach().mean())
    below = _conv_bn(running_mean=(MEAN_WARN_THRESHOLD - 0.05) * coverage, running_var=0.5)
    above = _conv_bn(running_mean=(MEAN_WARN_THRESHOLD + 0.05) * coverage, running_var=0.5)
    assert normalisation_warnings(below, CARD_1x8) == []
    assert len(normalisation_warnings(above, CARD_1x8)) == 1


def test_bn_check_flags_a_variance_off_by_100x():
    # unit white noise through the averaging kernel has variance ~1/9 inside; 1000x that is off.
    assert any("variance" in w for w in normalisation_warnings(_conv_bn(0.0, running_var=1000 / 9), CARD_1x8))
    assert normalisation_warnings(_conv_bn(0.0, running_var=1 / 9), CARD_1x8) == []


def test_bn_check_on_a_teacher_trained_on_normalised_inputs_is_quiet():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=8).train()
    with torch.no_grad():
        for _ in range(40):
            model(torch.randn(32, 1, 8, 8))  # what a right card feeds: mean 0, std 1
    assert normalisation_warnings(model.eval(), CARD_1x8) == []
    with torch.no_grad():
        model.train()
        for _ in range(40):
            model(torch.randn(32, 1, 8, 8) * 0.25 + 2.5)  # trained on badly normalised inputs
    assert len(normalisation_warnings(model.eval(), CARD_1x8)) == 1


# --- per-student cost --------------------------------------------------------------------------

def _costs(*archs: str) -> dict[str, int]:
    return {a: estimate_cost(create_model(a, num_classes=10, in_channels=1, image_size=8), (1, 8, 8)) for a in archs}


def test_dominant_student_is_flagged():
    costs = _costs("resnet8", "vgg8", "mobilenetv2")  # the README's original trio
    warning = dominant_student_warning(costs)
    assert warning is not None and "'mobilenetv2'" in warning and "resnet8, vgg8" in warning
    assert costs["mobilenetv2"] / sum(costs.values()) >= DOMINANT_SHARE
    assert dominant_student_warning(_costs("resnet8", "wrn_16_1", "vgg8")) is None  # the benchmark's trio
    assert dominant_student_warning({"a": 10}) is None  # one student shares with nobody
    assert dominant_student_warning({"a": 10, "b": None}) is None  # unknown cost: no claim


def test_measure_kd_step_ms_leaves_students_untouched():
    m = create_model("resnet8", num_classes=10, in_channels=1, image_size=8)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rng = torch.get_rng_state()
    ms = measure_kd_step_ms([m], torch.zeros(4, 1, 8, 8))
    assert len(ms) == 1 and ms[0] > 0
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in m.parameters())


# --- evaluate --card, ONNX metadata -------------------------------------------------------------

def test_evaluate_a_teacher_with_card(tmp_path, capsys):
    from safetensors.torch import save_file

    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=8).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "t.safetensors"))
    (tmp_path / "t.json").write_text(CARD_1x8.to_json())
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4, np.int64))
    rc = main(["evaluate", str(tmp_path / "t.safetensors"), str(tmp_path / "d.npz"), "--card", str(tmp_path / "t.json"), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out)["samples"] == 4
    rc = main(["evaluate", str(tmp_path / "t.safetensors"), str(tmp_path / "d.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and "--card teacher.json" in err


def test_onnx_export_carries_mean_and_std(tmp_path):
    import onnx

    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=8)
    path = export_onnx(model, CARD_1x8, tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["mean"]) == [0.3] and json.loads(props["std"]) == [0.4]
    assert parse_card(props["dfmscd_card"]) == CARD_1x8
