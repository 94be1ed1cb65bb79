"""The model zoo: every registered architecture builds and runs on the sizes the product accepts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dfmscd.errors import ConfigError, UnknownArchitectureError
from dfmscd.models import count_parameters, create_model, is_model, list_models
from dfmscd.models.layers import GuardedMaxPool2d

ZOO = [
    "resnet8", "resnet20", "resnet32", "resnet56", "resnet18", "resnet34",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13",
    "mobilenetv2", "shufflenetv2", "lenet5", "lenet5_half",
]


def _forward(model: nn.Module, c: int, side: int, n: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(n, c, side, side))


def test_list_models_has_the_zoo_and_torchvision_names() -> None:
    zoo = list_models(include_torchvision=False)
    assert set(ZOO) <= set(zoo)
    assert zoo == sorted(zoo)
    assert not any(n.startswith("tv/") for n in zoo)
    full = list_models()
    assert {"tv/resnet18", "tv/mobilenet_v3_small", "tv/vit_b_16"} <= set(full)
    assert is_model("wrn_40_2") and is_model("tv/resnet50")
    assert not is_model("resnet9000") and not is_model("tv/not_a_model")


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_small_and_cifar_sizes(name: str) -> None:
    for c, side in ((1, 8), (3, 32)):
        model = create_model(name, num_classes=7, in_channels=c, image_size=side)
        out = _forward(model, c, side)
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "DF-MSCD needs BN everywhere"


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1"])
def test_zoo_model_at_224(name: str) -> None:
    assert _forward(create_model(name, 5, 3, 224), 3, 224, n=1).shape == (1, 5)


@pytest.mark.parametrize("name", ["tv/resnet18", "tv/mobilenet_v3_small"])
def test_torchvision_models_adapted_to_channels_and_small_inputs(name: str) -> None:
    for c, side in ((1, 8), (3, 32)):
        model = create_model(name, num_classes=4, in_channels=c, image_size=side)
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first_conv.in_channels == c
        assert _forward(model, c, side).shape == (2, 4)


def test_torchvision_keys_stay_torchvision_keys() -> None:
    import torchvision

    ours = create_model("tv/resnet18", num_classes=10, in_channels=3, image_size=32).state_dict()
    theirs = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_torchvision_refuses_pretrained_weights_argument() -> None:
    with pytest.raises(ConfigError, match="weights"):
        create_model("tv/resnet18", 10, 3, 32, weights="IMAGENET1K_V1")


def test_unknown_names_raise_unknown_architecture() -> None:
    with pytest.raises(UnknownArchitectureError, match="resnet9000"):
        create_model("resnet9000", 10)
    with pytest.raises(UnknownArchitectureError, match="tv/nope"):
        create_model("tv/nope", 10)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unexpected keyword"):
        create_model("resnet8", 10, 3, 32, widen=3)
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("mobilenetv2", 10, 3, 32, width_mult=50.0)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet8", 0)
    small = create_model("mobilenetv2", 10, 3, 32, width_mult=0.5)
    assert count_parameters(small) < count_parameters(create_model("mobilenetv2", 10, 3, 32))


def test_count_parameters_matches_hand_count() -> None:
    assert count_parameters(nn.Linear(3, 4)) == 3 * 4 + 4
    assert count_parameters(nn.Conv2d(2, 5, 3, bias=False)) == 2 * 5 * 9
    # CIFAR ResNet-20 has ~0.27M parameters (He et al. 2016, table 6).
    assert 260_000 < count_parameters(create_model("resnet20", 10)) < 280_000
    assert count_parameters(create_model("resnet8", 10)) < count_parameters(create_model("resnet20", 10))


def test_guarded_pool_keeps_tiny_maps() -> None:
    pool = GuardedMaxPool2d()
    assert pool(torch.ones(1, 2, 1, 1)).shape == (1, 2, 1, 1)
    assert pool(torch.ones(1, 2, 5, 5)).shape == (1, 2, 3, 3)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert pool(x).flatten().tolist() == [5.0, 7.0, 13.0, 15.0]


def test_lenet5_keeps_the_papers_shapes_at_28x28() -> None:
    # At MNIST's 28x28 the padded first convolution gives LeNet-5's 32x32 maps, so the last
    # convolution sees 5x5 and returns 1x1 (no averaging), and the half network has half the widths.
    full, half = create_model("lenet5", 10, 1, 28), create_model("lenet5_half", 10, 1, 28)
    seen: dict[str, tuple[int, ...]] = {}
    full.conv3.register_forward_hook(lambda _m, inp, out: seen.update(conv3_in=tuple(inp[0].shape), conv3_out=tuple(out.shape)))
    _forward(full, 1, 28)
    assert seen == {"conv3_in": (2, 16, 5, 5), "conv3_out": (2, 120, 1, 1)}
    assert [full.conv1.out_channels, full.conv2.out_channels, full.conv3.out_channels, full.fc1.out_features] == [6, 16, 120, 84]
    assert [half.conv1.out_channels, half.conv2.out_channels, half.conv3.out_channels, half.fc1.out_features] == [3, 8, 60, 42]
    assert count_parameters(half) < count_parameters(full) / 3
