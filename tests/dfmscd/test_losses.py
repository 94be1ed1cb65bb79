"""Each loss term against a value computed by hand from its definition."""

import math

import pytest
import torch

from dfmscd import losses

LN3 = math.log(3.0)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_kd_loss_at_temperature_is_kl_times_t_squared():
    teacher = torch.tensor([[LN3, 0.0]])  # softmax at T=1: [0.75, 0.25]
    student = torch.tensor([[0.0, 0.0]])  # [0.5, 0.5]
    assert losses.kd_loss(student, teacher, 1.0).item() == pytest.approx(_kl([0.75, 0.25], [0.5, 0.5]), rel=1e-6)
    # T = 2: teacher logits halved -> p = [sqrt3, 1] / (sqrt3 + 1); scaled by T^2 = 4
    s3 = math.sqrt(3.0)
    expected = 4.0 * _kl([s3 / (s3 + 1), 1 / (s3 + 1)], [0.5, 0.5])
    assert losses.kd_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_averages_over_the_batch_and_is_zero_when_equal():
    t = torch.tensor([[LN3, 0.0], [1.0, 2.0]])
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert losses.kd_loss(s, t, 1.0).item() == pytest.approx(_kl([0.75, 0.25], [0.5, 0.5]) / 2, rel=1e-6)
    assert losses.kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_peer_loss_is_mean_kl_toward_each_detached_peer():
    s = torch.tensor([[0.0, 0.0]], requires_grad=True)
    p1 = torch.tensor([[LN3, 0.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, LN3]], requires_grad=True)
    value = losses.peer_loss(s, [p1, p2], 1.0)
    k = _kl([0.75, 0.25], [0.5, 0.5])
    assert value.item() == pytest.approx(k, rel=1e-6)  # both peers are equally far
    value.backward()
    assert p1.grad is None and p2.grad is None  # peers are targets, not trained by this term
    assert s.grad is not None
    assert losses.peer_loss(s, [], 1.0).item() == 0.0


def test_adversarial_loss_is_negative_kl_masked_to_agreeing_samples():
    teacher = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    student = torch.tensor([[0.0, -1e-3], [0.0, 1.0]])  # sample 0 agrees (class 0), sample 1 does not
    q0 = _softmax([0.0, -1e-3])
    expected = -_kl([0.75, 0.25], q0) / 2  # mean over the batch of 2, second sample masked
    assert losses.adversarial_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_agreement_mask_requires_every_student_to_match_the_teacher():
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert losses.agreement_mask(t, a).tolist() == [1.0, 1.0, 0.0]
    assert losses.agreement_mask(t, a, b).tolist() == [1.0, 0.0, 0.0]


def _js(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q)]
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def test_inter_student_loss_is_negative_mean_pairwise_js_masked():
    teacher = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    s1 = torch.tensor([[LN3, 0.0], [LN3, 0.0]])  # [0.75, 0.25]
    s2 = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # [0.5, 0.5]: argmax 0 (ties -> first), agrees
    s3 = torch.tensor([[2 * LN3, 0.0], [0.0, 1.0]])  # [0.9, 0.1]; disagrees on sample 1
    got = losses.inter_student_loss([s1, s2, s3], teacher).item()
    p1, p2, p3 = [0.75, 0.25], [0.5, 0.5], [0.9, 0.1]
    pairwise = (_js(p1, p2) + _js(p1, p3) + _js(p2, p3)) / 3
    assert got == pytest.approx(-pairwise / 2, rel=1e-5)  # only sample 0 survives the mask
    assert losses.inter_student_loss([s1], teacher).item() == 0.0


def test_js_is_symmetric_and_bounded_by_log2():
    a, b = torch.tensor([[50.0, -50.0]]), torch.tensor([[-50.0, 50.0]])
    assert losses.js_per_sample(a, b).item() == pytest.approx(math.log(2), rel=1e-4)
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(losses.js_per_sample(x, y), losses.js_per_sample(y, x))


def test_diversity_loss_is_mean_cosine_similarity_to_other_generators():
    mine = torch.tensor([1.0, 0.0], requires_grad=True)
    others = [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3.0])]
    value = losses.diversity_loss(mine, others)
    assert value.item() == pytest.approx((1 / math.sqrt(2) + 0.0) / 2, rel=1e-6)
    value.backward()
    assert mine.grad is not None and mine.grad.abs().sum() > 0
    assert losses.diversity_loss(mine, []).item() == 0.0


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    # each sample's CE is ln 3; weights 0.5 (class 0) and 2.0 (class 2): mean of 0.5·ln3 and 2·ln3
    w = torch.tensor([0.5, 1.0, 2.0])
    assert losses.weighted_cross_entropy(logits, labels, w).item() == pytest.approx(1.25 * LN3)
    assert losses.weighted_cross_entropy(logits, labels, None).item() == pytest.approx(LN3)
