"""The loss terms of DF-MSCD, as plain functions of logits so each can be checked by hand.

Conventions: ``kl(p‖q)`` is summed over classes and averaged over the batch. Adversarial terms
are *negated* divergences because the generator minimises its loss while it wants the
students to disagree; they are masked to samples where the models still agree on the class,
as in Fast-DFKD, so the generator looks for hard samples near the decision boundary instead of
drifting to garbage that nobody classifies consistently.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def kl_per_sample(target_logits: Tensor, logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(softmax(target/T) ‖ softmax(logits/T)) for each sample (shape N)."""
    log_p = F.log_softmax(target_logits / temperature, dim=1)
    log_q = F.log_softmax(logits / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: KL(teacher‖student) at temperature T, scaled by T² to keep gradient size."""
    return kl_per_sample(teacher_logits, student_logits, temperature).mean() * temperature**2


def peer_loss(student_logits: Tensor, peer_logits: Sequence[Tensor], temperature: float) -> Tensor:
    """Mean over peers of KL(peer‖student) at temperature T (×T²); peers are detached here."""
    if not peer_logits:
        return student_logits.new_zeros(())
    terms = [kd_loss(student_logits, p.detach(), temperature) for p in peer_logits]
    return torch.stack(terms).mean()


def agreement_mask(teacher_logits: Tensor, *student_logits: Tensor) -> Tensor:
    """1.0 where every student's argmax equals the teacher's, else 0.0 (shape N, no grad)."""
    with torch.no_grad():
        t = teacher_logits.argmax(dim=1)
        mask = torch.ones_like(t, dtype=teacher_logits.dtype)
        for s in student_logits:
            mask = mask * (s.argmax(dim=1) == t).to(teacher_logits.dtype)
    return mask


def adversarial_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Generator term −KL(teacher‖student), averaged over the batch with non-agreeing samples zeroed."""
    mask = agreement_mask(teacher_logits, student_logits)
    return -(kl_per_sample(teacher_logits, student_logits) * mask).mean()


def js_per_sample(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Jensen–Shannon divergence between two softmax outputs, per sample (bounded by log 2)."""
    p, q = F.softmax(logits_a, dim=1), F.softmax(logits_b, dim=1)
    m = 0.5 * (p + q)
    log_m = m.clamp_min(1e-12).log()
    kl_pm = (p * (p.clamp_min(1e-12).log() - log_m)).sum(dim=1)
    kl_qm = (q * (q.clamp_min(1e-12).log() - log_m)).sum(dim=1)
    return 0.5 * (kl_pm + kl_qm)


def inter_student_loss(student_logits: Sequence[Tensor], teacher_logits: Tensor) -> Tensor:
    """Generator term −(mean pairwise JS divergence between students), masked.

    The mask keeps samples on which *all* students agree with the teacher's class: once the
    students disagree on the argmax the sample has done its job, and pushing further only
    produces images no model classifies consistently. JS rather than KL because it is bounded,
    so this term cannot dominate the generator loss.
    """
    n = len(student_logits)
    if n < 2:
        return teacher_logits.new_zeros(())
    mask = agreement_mask(teacher_logits, *student_logits)
    pairs = [js_per_sample(student_logits[i], student_logits[j]) for i in range(n) for j in range(i + 1, n)]
    return -(torch.stack(pairs).mean(dim=0) * mask).mean()


def weighted_cross_entropy(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Mean over the batch of ``w[y_i] · CE_i`` (plain mean CE when ``class_weights`` is None).

    Not normalised by the sum of the weights: with balanced labels and weights that average to
    1 over classes (``synthesis.label_bridge.class_weights``) the loss keeps its usual scale, and
    an under-recognised class's samples weigh more in absolute terms.
    """
    ce = F.cross_entropy(logits, labels, reduction="none")
    if class_weights is None:
        return ce.mean()
    return (class_weights.to(ce.dtype)[labels] * ce).mean()


def diversity_loss(summary: Tensor, other_summaries: Sequence[Tensor]) -> Tensor:
    """Mean cosine similarity between this generator's batch summary and the others' (detached).

    A summary is one vector per generator batch (see ``TeacherBNHooks.feature_summary``);
    minimising the similarity keeps the generators of a mixture on different modes.
    """
    if not other_summaries:
        return summary.new_zeros(())
    sims = [F.cosine_similarity(summary, o.detach().to(summary.device), dim=0, eps=1e-8) for o in other_summaries]
    return torch.stack(sims).mean()


__all__ = [
    "kl_per_sample",
    "kd_loss",
    "peer_loss",
    "agreement_mask",
    "adversarial_loss",
    "js_per_sample",
    "inter_student_loss",
    "diversity_loss",
    "weighted_cross_entropy",
]
