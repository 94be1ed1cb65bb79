"""The BN hooks' statistics against torch's own batch norm, and the loss they form."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dfmscd.models import create_model
from dfmscd.synthesis.bn_hook import BatchNormStatsHook, TeacherBNHooks, batch_stats


def test_batch_stats_match_torch_batch_norm():
    x = torch.randn(6, 5, 4, 3) * 3 + 1
    mean, var = batch_stats(x)
    # torch.batch_norm in training mode with momentum 1 writes the batch mean and the
    # *unbiased* batch variance into the running buffers.
    rm, rv = torch.zeros(5), torch.ones(5)
    F.batch_norm(x, rm, rv, training=True, momentum=1.0, eps=1e-5)
    n = x.numel() / x.shape[1]
    assert torch.allclose(mean, rm, atol=1e-5)
    assert torch.allclose(var * n / (n - 1), rv, atol=1e-4)
    # and normalising with the biased variance reproduces torch.batch_norm's output
    ref = torch.batch_norm(x, None, None, None, None, True, 0.0, 1e-5, False)
    mine = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    assert torch.allclose(mine, ref, atol=1e-4)


def test_batch_stats_for_batchnorm1d_input():
    x = torch.randn(7, 3)
    mean, var = batch_stats(x)
    assert torch.allclose(mean, x.mean(0), atol=1e-6)
    assert torch.allclose(var, x.var(0, unbiased=False), atol=1e-6)


def _bn(channels=3):
    bn = nn.BatchNorm2d(channels).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    return bn


def test_hook_loss_is_mean_and_variance_distance_to_running_stats():
    bn = _bn()
    hook = BatchNormStatsHook(bn, momentum=0.9)
    hook.enabled = True
    x = torch.randn(8, 3, 5, 5)
    bn(x)
    mean, var = batch_stats(x)
    expected = torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)
    assert hook.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_hook_blends_past_batches_with_momentum():
    bn, m = _bn(), 0.75
    hook = BatchNormStatsHook(bn, momentum=m)
    hook.enabled = True
    x1, x2 = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4) + 1
    bn(x1)
    hook.update_ema()  # the EMA starts at the first batch's statistics
    bn(x2)
    (m1, v1), (m2, v2) = batch_stats(x1), batch_stats(x2)
    bm, bv = m * m1 + (1 - m) * m2, m * v1 + (1 - m) * v2
    expected = torch.linalg.vector_norm(bm - bn.running_mean) + torch.linalg.vector_norm(bv - bn.running_var)
    assert hook.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    hook.update_ema()
    assert torch.allclose(hook.ema[0], bm, atol=1e-6) and torch.allclose(hook.ema[1], bv, atol=1e-6)
    assert not hook.ema[0].requires_grad


def test_hook_loss_carries_gradient_to_the_input():
    bn = _bn()
    hook = BatchNormStatsHook(bn, momentum=0.0)
    hook.enabled = True
    x = torch.randn(4, 3, 3, 3, requires_grad=True)
    bn(x)
    hook.loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_teacher_hooks_cover_every_bn_layer_and_only_fire_when_active():
    teacher = create_model("resnet8", 4, in_channels=1, image_size=8).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    hooks = TeacherBNHooks(teacher, momentum=0.9)
    assert len(hooks) == n_bn
    x = torch.randn(5, 1, 8, 8)
    teacher(x)
    assert all(h.loss is None for h in hooks.hooks)  # inactive: nothing recorded
    with hooks.active():
        teacher(x)
        total = hooks.loss()
        summary = hooks.feature_summary()
    assert total.item() == pytest.approx(sum(h.loss.item() for h in hooks.hooks), rel=1e-6)
    assert summary.shape == (64,)  # the deepest BN layer of resnet8 has 64 channels
    hooks.update_ema()
    state = hooks.state_dict()
    other = TeacherBNHooks(create_model("resnet8", 4, in_channels=1, image_size=8).eval(), momentum=0.9)
    other.load_state_dict(state)
    assert all(torch.equal(a.ema[0], b.ema[0]) for a, b in zip(hooks.hooks, other.hooks))
    hooks.remove()
    with hooks.active():
        teacher(x)
    with pytest.raises(RuntimeError):
        hooks.loss()
