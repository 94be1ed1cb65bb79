"""Generator output shapes and normalisation, uint8 conversion, differentiable augmentation."""

import pytest
import torch

from dfmscd.synthesis import DiffAugment, Generator, from_uint8, plan_upsampling, to_uint8


@pytest.mark.parametrize("side", [8, 9, 28, 32, 224])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_produces_the_teacher_input_shape(side, channels):
    g = Generator(8, 4, channels, side, [0.5] * channels, [0.25] * channels, num_classes=3)
    z, y = torch.randn(2, 8), torch.tensor([0, 2])
    with torch.no_grad():
        x01 = g.render(z, y)
    assert x01.shape == (2, channels, side, side)
    assert float(x01.min()) >= 0.0 and float(x01.max()) <= 1.0
    assert torch.allclose(g(z, y), (x01 - 0.5) / 0.25, atol=1e-6)  # BN in train mode: same batch, same output


def test_upsampling_plan_starts_near_a_quarter_and_caps_doublings():
    assert plan_upsampling(32) == (2, 8)
    assert plan_upsampling(8) == (1, 4)
    k, start = plan_upsampling(224)
    assert k == 5 and start * 2**k >= 224


def test_conditional_generator_needs_labels_and_unconditional_does_not():
    cond = Generator(8, 4, 1, 8, [0.5], [0.5], num_classes=3)
    with pytest.raises(ValueError):
        cond.render(torch.randn(2, 8))
    plain = Generator(8, 4, 1, 8, [0.5], [0.5])
    assert plain.render(torch.randn(2, 8)).shape == (2, 1, 8, 8)


def test_uint8_round_trip():
    x01 = torch.rand(3, 3, 8, 8)
    u8 = to_uint8(x01)
    assert u8.dtype == torch.uint8
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, -1, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, -1, 1, 1)
    back = from_uint8(u8, mean, std) * std + mean
    assert torch.allclose(back, x01, atol=0.5 / 255 + 1e-6)


def test_augmentation_is_a_per_sample_shifted_crop_with_black_padding():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    aug = DiffAugment(8, flip=False, padding=2)
    out = aug(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(16):
        matches = [
            (oy, ox)
            for oy in range(5)
            for ox in range(5)
            if torch.equal(out[i], padded[i, :, oy : oy + 8, ox : ox + 8])
        ]
        assert matches, f"sample {i} is not a crop of its padded input"
        offsets.add(matches[0])
    assert len(offsets) > 1  # offsets are drawn per sample


def test_augmentation_flips_some_samples_and_passes_gradients():
    torch.manual_seed(1)
    x = torch.rand(32, 3, 8, 8, requires_grad=True)
    out = DiffAugment(8, flip=True, padding=0)(x)
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(32)]
    same = [torch.equal(out[i], x[i]) for i in range(32)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
