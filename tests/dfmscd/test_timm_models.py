"""timm architectures as ``timm/<name>``: listing, building at 1/3 channels and small sides, the
card contract (build_model / load_teacher / save_model), BatchNorm required of teachers, and a
short distillation with a timm teacher and a timm student. Small timm models only (timm's own
``test_*`` models and the 0.5-width MobileNet/LCNet), so the file stays fast on a shared CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dfmscd.errors import CardError, CheckpointError, ConfigError, UnknownArchitectureError
from dfmscd.models import check_model_arguments, count_parameters, create_model, is_model, list_models

timm = pytest.importorskip("timm")

SMALL_BN = ["timm/test_resnet", "timm/mobilenetv3_small_050", "timm/test_efficientnet", "timm/lcnet_050"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dfmscd/conftest.py


def _forward(model: nn.Module, c: int, side: int, n: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(n, c, side, side))


def _card(arch: str, c: int = 1, side: int = 8, k: int = 4, **kw):
    from dfmscd.io import parse_card

    return parse_card({"architecture": arch, "num_classes": k, "input_shape": [c, side, side],
                       "mean": [0.5] * c, "std": [0.25] * c, **kw})


def _with_bn_statistics(model: nn.Module, c: int, side: int, seed: int = 0) -> nn.Module:
    """A few train-mode batches so that BN running statistics are not the init values."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, c, side, side, generator=g) * 0.3 + 0.2)
    return model.eval()


def test_timm_names_are_listed_on_request_and_recognised() -> None:
    default = list_models()
    assert not any(n.startswith("timm/") for n in default), "timm is opt-in in list_models"
    full = list_models(include_timm=True)
    timm_names = [n for n in full if n.startswith("timm/")]
    assert full[: len(default)] == default
    assert len(timm_names) == len(timm.list_models()) and timm_names == sorted(timm_names)
    assert {"timm/resnet10t", "timm/mobilenetv3_small_050", "timm/vit_tiny_patch16_224"} <= set(timm_names)
    assert is_model("timm/resnet10t") and is_model("timm/test_vit")
    assert not is_model("timm/not_a_model")
    assert not is_model("timm/resnet10t.c3_in1k"), "pretrained tags are not architectures"
    assert not is_model("resnet10t"), "timm names live under timm/"


@pytest.mark.parametrize("name", SMALL_BN)
def test_timm_models_adapt_to_channels_and_small_sides(name: str) -> None:
    for c, side in ((1, 8), (3, 32), (3, 16)):
        model = create_model(name, num_classes=7, in_channels=c, image_size=side)
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first_conv.in_channels == c
        assert model.dfmscd_input_side == 32  # stride-32 CNNs work at >= 32 px
        out = _forward(model, c, side)
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_timm_resnet10t_from_the_issue_builds_at_8_and_32_px() -> None:
    for c, side in ((1, 8), (3, 32)):
        assert _forward(create_model("timm/resnet10t", 10, c, side), c, side).shape == (2, 10)


def test_fixed_size_models_work_at_their_own_input_size() -> None:
    model = create_model("timm/test_vit", num_classes=3, in_channels=1, image_size=8)
    cfg = timm.models.get_pretrained_cfg("test_vit")
    assert cfg.fixed_input_size and model.dfmscd_input_side == cfg.input_size[-1]
    assert _forward(model, 1, 8).shape == (2, 3)


def test_larger_requested_sides_are_kept() -> None:
    model = create_model("timm/test_resnet", 3, 3, 64)
    assert model.dfmscd_input_side == 64
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-1]))
    _forward(model, 3, 64)
    assert seen == [64]


def test_timm_keys_and_shapes_stay_timm_keys() -> None:
    ours = create_model("timm/mobilenetv3_small_050", num_classes=10, in_channels=1, image_size=8).state_dict()
    theirs = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10, in_chans=1).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("kwargs, word", [
    ({"pretrained": True}, "pretrained"),
    ({"checkpoint_path": "/etc/passwd"}, "checkpoint_path"),
    ({"pretrained_cfg_overlay": "x"}, "pretrained_cfg_overlay"),
    ({"features_only": True}, "features_only"),
    ({"in_chans": 3}, "in_chans"),
])
def test_pretrained_and_card_owned_arguments_are_refused(kwargs, word) -> None:
    with pytest.raises(ConfigError, match=word):
        check_model_arguments("timm/test_resnet", 10, 3, 32, **kwargs)
    with pytest.raises(ConfigError, match=word):
        create_model("timm/test_resnet", 10, 3, 32, **kwargs)


def test_bad_timm_arguments_and_names() -> None:
    with pytest.raises(UnknownArchitectureError, match="timm/nope"):
        create_model("timm/nope", 10)
    with pytest.raises(UnknownArchitectureError):
        check_model_arguments("timm/resnet10t.c3_in1k", 10)
    with pytest.raises(ConfigError, match="in_channels"):
        check_model_arguments("timm/test_resnet", 10, 0, 32)
    with pytest.raises(ConfigError, match="timm/test_resnet"):
        create_model("timm/test_resnet", 10, 3, 32, not_an_argument=1)
    # an accepted timm keyword passes through
    model = create_model("timm/mobilenetv3_small_050", 4, 3, 32, drop_rate=0.5)
    assert _forward(model, 3, 32).shape == (2, 4)


def test_card_contract_teacher_load_and_model_file_round_trip(tmp_path) -> None:
    from safetensors.torch import save_file

    from dfmscd.io import build_model, load_model, load_teacher, save_model, validate_card

    card = _card("timm/test_resnet", c=3, side=16, k=5)
    validate_card(card)
    torch.manual_seed(0)
    source = _with_bn_statistics(create_model("timm/test_resnet", 5, 3, 16), 3, 16)
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    teacher = load_teacher(path, card)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(teacher(x), source(x))

    save_model(teacher, card, tmp_path / "model.safetensors")
    module, back = load_model(tmp_path / "model.safetensors")
    assert back == card
    with torch.no_grad():
        assert torch.equal(module(x), source(x))

    other = create_model("timm/test_efficientnet", 5, 3, 16).state_dict()
    with pytest.raises(CheckpointError, match="timm/test_resnet"):
        build_model(card, other)
    with pytest.raises(CardError, match="timm/nope"):
        validate_card(_card("timm/nope"))
    with pytest.raises(CardError, match="pretrained"):
        validate_card(_card("timm/test_resnet", arch_kwargs={"pretrained": True}))


@pytest.mark.parametrize("name", ["timm/test_vit", "timm/test_convnext"])
def test_models_without_batchnorm_are_refused_as_teachers(name: str, tmp_path) -> None:
    from dfmscd.io import build_model, has_batchnorm

    card = _card(name, c=1, side=8, k=3)
    model = create_model(name, 3, 1, 8)
    assert not has_batchnorm(model)
    sd = model.state_dict()
    assert build_model(card, sd) is not None  # fine as a student / plain model
    with pytest.raises(CheckpointError, match="BatchNorm"):
        build_model(card, sd, require_batchnorm=True)


def test_distillation_with_a_timm_teacher_and_a_timm_student() -> None:
    from dfmscd.config import Budget, resolve_config
    from dfmscd.engine import Distiller, StudentSpec
    from dfmscd.io import build_model

    card = _card("timm/test_resnet", c=1, side=8, k=4)
    torch.manual_seed(0)
    source = _with_bn_statistics(create_model("timm/test_resnet", 4, 1, 8), 1, 8)
    teacher = build_model(card, source.state_dict(), require_batchnorm=True)
    cfg = resolve_config("fast", dict(synth_batch_size=8, kd_batch_size=8, kd_steps=2, latent_dim=8,
                                      generator_width=4, pool_capacity=64, inner_steps=1, seed=0, device="cpu"))
    students = [StudentSpec("timm/mobilenetv3_small_050"), StudentSpec("resnet8", "small")]
    result = Distiller(teacher, card, students, cfg, Budget(epochs=1)).run()

    assert result.status == "completed"
    assert set(result.students) == {"timm_mobilenetv3_small_050", "small"}
    student = result.students["timm_mobilenetv3_small_050"]
    student_card = result.cards["timm_mobilenetv3_small_050"]
    assert student_card.architecture == "timm/mobilenetv3_small_050"
    assert student_card.input_shape == (1, 8, 8) and student_card.num_classes == 4
    rep = result.report["students"]["timm_mobilenetv3_small_050"]
    assert rep["architecture"] == "timm/mobilenetv3_small_050"
    assert rep["params"] == count_parameters(student)
    assert result.report["epochs_completed"] == 1
    assert rep["final_loss"] is not None and rep["final_loss"] == rep["final_loss"]  # trained, not NaN
    fresh = create_model("timm/mobilenetv3_small_050", 4, 1, 8).state_dict()
    assert list(student.state_dict()) == list(fresh)  # still loadable as the card's architecture
    out = _forward(student, 1, 8, n=3)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
