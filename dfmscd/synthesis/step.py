"""One Fast-DFKD meta-synthesis step for one generator of the mixture.

The slow generator is copied into a fast clone; a fresh latent z and the clone are optimised
for a few inner steps on

    bn·L_BN + oh·CE(T(aug(x)), y) + adv·L_adv(partner) + student_adv·L_inter + diversity·L_div

and the slow generator then takes one meta step: Reptile moves it toward the fast weights,
first-order MAML applies the fast clone's gradients (summed over the inner steps, as Fast-DFKD
does) through its own optimiser. The images rendered by the adapted clone after the last inner
update are returned for the pool: they are what the meta-learned generator is for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfmscd import losses
from dfmscd.synthesis.augment import DiffAugment
from dfmscd.synthesis.bn_hook import TeacherBNHooks
from dfmscd.synthesis.generator import Generator, from_uint8, to_uint8

Tensor = torch.Tensor


@dataclass(frozen=True)
class SynthesisWeights:
    bn: float
    oh: float
    adv: float
    student_adv: float
    diversity: float


@dataclass
class SynthesisOutput:
    images: Tensor  # uint8 N×C×H×W, CPU
    labels: Tensor  # requested, CPU
    teacher_argmax: Tensor  # teacher's class for the stored (quantised) images, CPU
    summary: Tensor | None  # detached feature summary of the last inner step
    loss_terms: dict[str, float]
    teacher_confidence: float = float("nan")  # mean max-softmax of the teacher on the stored images
    recognised: float = float("nan")  # share of stored images whose teacher argmax is the requested label


def synthesize(
    slow: Generator,
    fast: Generator,
    meta_optimizer: torch.optim.Optimizer | None,
    *,
    labels: Tensor,
    teacher: nn.Module,
    hooks: TeacherBNHooks,
    students: Sequence[nn.Module],
    partner: int,
    weights: SynthesisWeights,
    augment: DiffAugment | None,
    lr_g: float,
    lr_z: float,
    inner_steps: int,
    meta_algorithm: Literal["reptile", "fomaml"],
    other_summaries: Sequence[Tensor] = (),
    adversarial: bool = True,
    should_cancel: Callable[[], bool] = lambda: False,
    class_weights: Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> SynthesisOutput | None:
    """Run one meta step; returns None (leaving the slow generator untouched) on cancellation.

    ``meta_optimizer=None`` adapts the clone without updating the slow generator (evaluation).
    Students must already be in eval mode with gradients off; only their outputs are used.
    ``class_weights`` (C floats) weight each sample's class loss by its requested label
    (the label bridge's correction); ``amp_dtype`` runs the teacher and students under autocast
    (the generator, the losses and the BN statistics stay in float32); ``memory_format`` is
    the layout the images are handed to the networks in (``torch.channels_last`` on CUDA).
    """
    device = next(slow.parameters()).device
    fast.load_state_dict(slow.state_dict())
    fast.train()
    z = torch.randn(labels.shape[0], slow.latent_dim).to(device).requires_grad_()
    y = labels.to(device)
    cw = class_weights.to(device) if class_weights is not None else None
    inner = torch.optim.Adam(
        [{"params": fast.parameters()}, {"params": [z], "lr": lr_z}], lr=lr_g, betas=(0.5, 0.999)
    )
    fomaml = meta_algorithm == "fomaml" and meta_optimizer is not None
    if fomaml:
        meta_optimizer.zero_grad(set_to_none=False)
        for p in slow.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    use_adv = adversarial and weights.adv > 0
    use_inter = adversarial and weights.student_adv > 0 and len(students) > 1
    use_div = weights.diversity > 0 and len(other_summaries) > 0
    terms: dict[str, Tensor] = {}
    summary: Tensor | None = None
    for _ in range(inner_steps):
        if should_cancel():
            return None
        x01 = fast.render(z, y)
        x = fast.normalise(augment(x01) if augment is not None else x01).contiguous(memory_format=memory_format)
        with hooks.active(), _autocast(device, amp_dtype):
            t_out = teacher(x).float()
            loss_bn = hooks.loss().float()
            feat = hooks.feature_summary().float()
        loss_oh = losses.weighted_cross_entropy(t_out, y, cw)
        loss = weights.bn * loss_bn + weights.oh * loss_oh
        terms = {"bn": loss_bn.detach(), "oh": loss_oh.detach()}
        if use_adv or use_inter:
            with _autocast(device, amp_dtype):
                s_outs = [s(x).float() for s in students] if use_inter else [students[partner](x).float()]
            p_out = s_outs[partner] if use_inter else s_outs[0]
            if use_adv:
                loss_adv = losses.adversarial_loss(p_out, t_out)
                loss = loss + weights.adv * loss_adv
                terms["adv"] = loss_adv.detach()
            if use_inter:
                loss_inter = losses.inter_student_loss(s_outs, t_out)
                loss = loss + weights.student_adv * loss_inter
                terms["inter"] = loss_inter.detach()
        if use_div:
            loss_div = losses.diversity_loss(feat, other_summaries)
            loss = loss + weights.diversity * loss_div
            terms["div"] = loss_div.detach()
        terms["total"] = loss.detach()
        inner.zero_grad(set_to_none=True)
        loss.backward()
        if fomaml:
            for p, fp in zip(slow.parameters(), fast.parameters()):
                if fp.grad is not None:
                    p.grad.add_(fp.grad)
        inner.step()
        summary = feat.detach()
    hooks.update_ema()
    if meta_optimizer is not None:
        if not fomaml:  # Reptile: the pseudo-gradient points from the fast weights back to the slow ones
            meta_optimizer.zero_grad(set_to_none=False)
            for p, fp in zip(slow.parameters(), fast.parameters()):
                p.grad = (p.detach() - fp.detach()).clone()
        meta_optimizer.step()
    with torch.no_grad():
        images = to_uint8(fast.render(z, y))
        x_final = from_uint8(images, fast.norm_mean, fast.norm_std).contiguous(memory_format=memory_format)
        with _autocast(device, amp_dtype):
            t_final = teacher(x_final).float()
        argmax = t_final.argmax(dim=1)
        confidence = F.softmax(t_final, dim=1).amax(dim=1).mean()
        recognised = (argmax == y).float().mean()
        # one host transfer for every scalar of this step
        names = list(terms)
        scalars = torch.stack([*(terms[k].float() for k in names), confidence, recognised]).cpu().tolist()
    return SynthesisOutput(
        images=images,  # on the generator's device: the pool decides where it keeps them
        labels=labels.cpu(),
        teacher_argmax=argmax.cpu(),
        summary=summary,
        loss_terms=dict(zip(names, scalars[: len(names)])),
        teacher_confidence=scalars[-2],
        recognised=scalars[-1],
    )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on the device's type, or a no-op context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
