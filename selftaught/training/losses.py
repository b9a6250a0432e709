"""Token-level divergences between a student's and a teacher's next-token distributions.

The generalized Jensen-Shannon divergence of Agarwal et al. (GKD, arXiv 2306.13649, Eq. 1):

    M       = beta * P_teacher + (1 - beta) * P_student
    JSD_beta = beta * KL(P_teacher || M) + (1 - beta) * KL(P_student || M)

At the two ends the mixture degenerates (the formula tends to 0), so the paper's limits are used
instead: beta = 0 is the forward KL(teacher || student), beta = 1 the reverse KL(student || teacher).

Written here rather than taken from TRL because we need per-token values (TRL reduces inside the
function) so that the trainer can normalise over a whole optimizer step; tests check it against
TRL's `generalized_jsd_loss` and a float64 computation from the definition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) summed over the last (vocabulary) axis, from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-position generalized JSD between student and teacher, shape `logits.shape[:-1]`.

    Both logits are over the same vocabulary (align them first). Computed in float32 at least,
    whatever the models' dtype, because bf16 log-softmax over 150k entries loses the small terms.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student_lp = F.log_softmax(student_logits.to(dtype), dim=-1)
    teacher_lp = F.log_softmax(teacher_logits.to(dtype), dim=-1)
    if beta == 0.0:
        return kl_from_log_probs(teacher_lp, student_lp)
    if beta == 1.0:
        return kl_from_log_probs(student_lp, teacher_lp)
    mixture_lp = torch.logsumexp(
        torch.stack([teacher_lp + math.log(beta), student_lp + math.log1p(-beta)]), dim=0
    )
    return beta * kl_from_log_probs(teacher_lp, mixture_lp) + (1.0 - beta) * kl_from_log_probs(
        student_lp, mixture_lp
    )
