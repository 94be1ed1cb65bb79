"""The mixture of generators and one meta-synthesis step."""

import pytest
import torch

from dfmscd.models import create_model
from dfmscd.synthesis import (
    Generator,
    MixtureOfGenerators,
    SynthesisWeights,
    TeacherBNHooks,
    partner_students,
    resolve_num_generators,
    synthesize,
)


def _gen(k=0):
    return Generator(latent_dim=8, width=4, channels=1, image_size=8, mean=[0.5], std=[0.5], num_classes=3)


@pytest.mark.parametrize(
    "k_config, students, expected",
    [(2, 3, [0, 1]), (None, 3, [0, 1, 2]), (5, 2, [0, 1, 0, 1, 0]), (1, 4, [0]), (None, 1, [0])],
)
def test_generators_and_partners_follow_the_config(k_config, students, expected):
    k = resolve_num_generators(k_config, students)
    assert partner_students(k, students) == expected
    mix = MixtureOfGenerators(k, students, _gen, meta_lr=0.01)
    assert len(mix) == len(expected) and mix.partners == expected
    assert len(mix.meta_optimizers) == len(expected)
    assert len({id(g) for g in mix.generators}) == len(expected)  # independent generators


def test_reset_touches_only_the_chosen_generator():
    torch.manual_seed(0)
    mix = MixtureOfGenerators(2, 2, _gen, meta_lr=0.01)
    before = [{k: v.clone() for k, v in g.state_dict().items()} for g in mix.generators]
    mix.summaries = [torch.ones(3), torch.ones(3)]
    mix.reset(1, first_layer_only=True)
    after = mix.generators[1].state_dict()
    assert not torch.equal(after["l1.weight"], before[1]["l1.weight"])
    assert torch.equal(after["blocks.2.weight"], before[1]["blocks.2.weight"])
    assert all(torch.equal(v, before[0][k]) for k, v in mix.generators[0].state_dict().items())
    mix.reset(0)
    assert not torch.equal(mix.generators[0].state_dict()["blocks.2.weight"], before[0]["blocks.2.weight"])
    assert mix.summaries[0] is None and mix.summaries[1] is not None
    assert len(mix.other_summaries(0)) == 1 and len(mix.other_summaries(1)) == 0


def _setup():
    torch.manual_seed(0)
    teacher = create_model("resnet8", 3, in_channels=1, image_size=8).eval().requires_grad_(False)
    students = [create_model("resnet8", 3, in_channels=1, image_size=8).eval().requires_grad_(False) for _ in range(2)]
    hooks = TeacherBNHooks(teacher, momentum=0.9)
    mix = MixtureOfGenerators(2, 2, _gen, meta_lr=0.01)
    return teacher, students, hooks, mix


def _step(mix, k, teacher, students, hooks, meta=True, algorithm="reptile", **kw):
    return synthesize(
        mix.generators[k], mix.fast_for(k), mix.meta_optimizers[k] if meta else None,
        labels=torch.tensor([0, 1, 2, 0, 1, 2]), teacher=teacher, hooks=hooks, students=students,
        partner=mix.partners[k], weights=SynthesisWeights(10.0, 0.5, 1.33, 1.0, 0.1), augment=None,
        lr_g=0.01, lr_z=0.05, inner_steps=2, meta_algorithm=algorithm,
        other_summaries=mix.other_summaries(k), **kw,
    )  # fmt: skip


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_meta_step_updates_the_slow_generator_and_returns_pool_images(algorithm):
    teacher, students, hooks, mix = _setup()
    before = [p.clone() for p in mix.generators[0].parameters()]
    other = [p.clone() for p in mix.generators[1].parameters()]
    out = _step(mix, 0, teacher, students, hooks, algorithm=algorithm)
    assert out is not None
    assert out.images.dtype == torch.uint8 and out.images.shape == (6, 1, 8, 8)
    assert out.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert out.teacher_argmax.shape == (6,) and int(out.teacher_argmax.max()) < 3
    assert out.summary is not None and out.summary.shape == (64,) and not out.summary.requires_grad
    assert {"bn", "oh", "adv", "inter", "total"} <= set(out.loss_terms)
    assert any(not torch.equal(a, b) for a, b in zip(before, mix.generators[0].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(other, mix.generators[1].parameters()))
    assert all(h.ema is not None for h in hooks.hooks)  # BN statistics folded into the blend
    assert all(p.grad is None for s in students for p in s.parameters())  # students untouched


def test_diversity_term_appears_once_another_generator_has_a_summary():
    teacher, students, hooks, mix = _setup()
    mix.summaries[0] = _step(mix, 0, teacher, students, hooks).summary
    out = _step(mix, 1, teacher, students, hooks)
    assert "div" in out.loss_terms and -1.0 <= out.loss_terms["div"] <= 1.0


def test_evaluation_step_leaves_the_slow_generator_alone():
    teacher, students, hooks, mix = _setup()
    before = [p.clone() for p in mix.generators[0].parameters()]
    out = _step(mix, 0, teacher, students, hooks, meta=False, adversarial=False)
    assert out is not None and "adv" not in out.loss_terms
    assert all(torch.equal(a, b) for a, b in zip(before, mix.generators[0].parameters()))


def test_cancellation_inside_the_inner_loop_aborts_without_a_meta_update():
    teacher, students, hooks, mix = _setup()
    before = [p.clone() for p in mix.generators[0].parameters()]
    polls = []

    def cancel_on_second_poll():
        polls.append(1)
        return len(polls) >= 2

    assert _step(mix, 0, teacher, students, hooks, should_cancel=cancel_on_second_poll) is None
    assert len(polls) == 2
    assert all(torch.equal(a, b) for a, b in zip(before, mix.generators[0].parameters()))


def test_mixture_state_round_trip():
    _, _, _, mix = _setup()
    mix.summaries[1] = torch.arange(3.0)
    other = MixtureOfGenerators(2, 2, _gen, meta_lr=0.01)
    other.load_state_dict(mix.state_dict())
    for a, b in zip(mix.generators, other.generators):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert other.summaries[0] is None and torch.equal(other.summaries[1], torch.arange(3.0))
    with pytest.raises(ValueError):
        MixtureOfGenerators(3, 2, _gen, meta_lr=0.01).load_state_dict(mix.state_dict())


@pytest.mark.parametrize(
    "conditional, unconditional, k, expected",
    [(True, 0, 3, [True, True, True]), (True, 2, 3, [True, False, False]), (True, 5, 3, [True, False, False]),
     (True, 1, 1, [True]), (False, 0, 2, [False, False]), (False, 1, 3, [False, False, False])],
)
def test_which_generators_are_conditional(conditional, unconditional, k, expected):
    from dfmscd.config import resolve_config
    from dfmscd.synthesis import conditional_generators

    cfg = resolve_config("fast", {"conditional_generator": conditional, "unconditional_generators": unconditional})
    assert conditional_generators(cfg, k) == expected


def _maybe_conditional(k):
    return Generator(latent_dim=8, width=4, channels=1, image_size=8, mean=[0.5], std=[0.5],
                     num_classes=3 if k == 0 else 0)


def test_a_mixed_mixture_steps_each_generator_with_a_scratch_copy_of_its_own_architecture():
    teacher, students, hooks, _ = _setup()
    mix = MixtureOfGenerators(3, 2, _maybe_conditional, meta_lr=0.01)
    assert mix.generators[0].embed is not None and mix.generators[1].embed is None
    assert mix.fast_for(1) is mix.fast_for(2)  # same architecture, one scratch copy
    assert mix.fast_for(0) is not mix.fast_for(1)
    assert mix.fast_for(0).embed is not None and mix.fast_for(1).embed is None
    for k in range(3):
        before = [p.clone() for p in mix.generators[k].parameters()]
        out = _step(mix, k, teacher, students, hooks)
        assert out is not None and out.images.shape == (6, 1, 8, 8)
        assert any(not torch.equal(a, b) for a, b in zip(before, mix.generators[k].parameters()))
