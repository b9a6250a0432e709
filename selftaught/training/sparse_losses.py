"""Distillation losses for a teacher that is not in training memory: top-k log-probabilities, or one a token.

A served or cached teacher does not hand over its next-token distribution (a 49k vocabulary is 196 KB
of float32 per token); it returns, per completion position, its K most likely tokens with their
log-probabilities and the log-probability of the completion's actual token: a `SparseTeacher`. The
student's full logits are in training memory as usual. Two losses are built on that.

1. `sparse_generalized_jsd`: the generalized JSD of `losses.generalized_jsd` (beta 0 forward KL, beta 1
   reverse KL, the limits as the plain KLs) between the two distributions coarse-grained to the bins
   {one per token of the support S = teacher's top-k ∪ {actual token}} + {one tail bin for the rest}:

       teacher tail = 1 - sum_{v in S} p_v      from the top-k log-probabilities alone
       student tail = 1 - sum_{v in S} q_v      from the student's full logits

   Why the tail bin (verl PR 7855; METHODS.md section 3): a divergence summed over S alone is not a
   divergence. The reverse KL's terms q_v log(q_v / p_v) are negative where q_v < p_v, so a student that
   moves mass off S lowers it; a loss renormalised over S cannot see that mass at all. Binned, both sides
   are distributions again, and the loss is >= 0 and 0 only when the student matches the teacher on every
   token of S and in its total mass outside it.
   The actual token joins S for every beta (the issue names it for the JSD and the reverse KL only): its
   teacher log-probability is known anyway, and a finer partition is never further from the dense loss.

   Bias: coarse-graining never increases an f-divergence (the generalized JSD is one), so the sparse
   loss is a lower bound on the dense one that rises with K; when S covers the vocabulary it equals the
   dense loss and its gradient (tests/test_sparse_losses.py, 1e-6 in float64). What it cannot see is how
   the student spreads its tail over the tokens outside S: only the tail's total is matched.

   Numerics. The student's tail is logsumexp of its logits outside S minus logsumexp of all of them,
   never 1 minus a sum close to 1, so a tail of 1e-9 keeps its precision. The teacher's tail is
   log(-expm1(logsumexp(log p_S))). Its top-k log-probabilities are only known to the precision of their
   dtype, so a top-k mass within eps of 1 (or above 1 by rounding) is clamped to 1 - eps, eps =
   finfo(dtype of the teacher's log-probabilities).eps: the teacher's tail is never below eps (otherwise
   the reverse KL's tail term q_tail log(q_tail / p_tail) would be infinite for a tail that is rounding
   noise). A mass above 1 by more than 1% is refused: those are not log-probabilities over the
   vocabulary. When S covers the whole vocabulary there is no tail bin on either side.

   Gradient, closed form (as in losses.py, so that backward keeps no [tokens x vocabulary] temporaries):
   with r = d loss / d(bin logits) from `losses.jsd_grad_rows` on the bins, and r' = r - q_bin * sum(r)
   (0 up to rounding when both sides sum to 1), a token v of S gets r'_v and a token outside S gets
   r'_tail * q_v / q_tail: the tail bin's gradient shared in proportion to each token's share of the tail.

   Cost: per position the teacher sends K + 1 ids and log-probabilities (12 bytes each as int64 + float32
   here; 396 bytes at K = 32 against 196 KB of dense float32 logits). Forward and backward work in
   `CHUNK_ROWS`-row chunks of [rows x vocabulary] float32 temporaries (an upcast copy, the logits with S
   masked out, and in backward the tail's share), 25 MB each at a 49k vocabulary; saved for backward are
   the student's logits themselves (alive anyway), the support ids and the two binned distributions
   ([tokens x (K + 2)]).

2. `sampled_kl`: reverse KL(q || p) from the teacher's log-probability of each actual token alone (one
   number per token over the wire), as a per-token policy-gradient signal: the update of Tinker's
   on-policy distillation recipe (advantage = -(log q - log p) on the student's own tokens). The tokens
   must be samples from q itself (on-policy, at temperature 1: for samples drawn at another temperature,
   q is the student's logits divided by it).

   Per position, with x ~ q and delta = log q(x) - log p(x):
     k1 = delta                        unbiased for KL(q || p), but takes either sign;
     k3 = (r - 1) - log r, r = p/q     unbiased too (E_q[r] = 1), never negative, lower variance.
   The gradient. d KL/d theta = sum_x q(x) d log q(x) * delta(x) + sum_x q(x) d delta(x), and the second
   sum is sum_x d q(x) = 0, so delta * d log q(x) (advantage A = -delta, detached, as Tinker's loss
   -A log q(x)) is an unbiased sample of it: the score-function term is all there is. For k3 the
   surrogate must keep both its terms: k3 * d log q (score function) + d k3 (pathwise, = (1 - r) d log q)
   sums to exactly delta * d log q, k1's sample, per sample. The two shortcuts are biased: k3 as the
   advantage alone has expectation d KL(q || p) + sum_x p(x) d log q(x) = d KL(q || p) - d KL(p || q);
   the pathwise term alone has expectation -sum_x p(x) d log q(x) = d KL(p || q), the forward KL's.
   So both estimators give the same update here; k3 changes only the value the loss reports (each
   token's KL estimate, with lower variance and never negative), which is what is logged.

   Credit assignment: per token, no future-token credit, as Tinker. The sequence's reverse KL has the
   gradient E[sum_t d log q(x_t) * sum_{t' >= t} delta_t'] (reward-to-go); the per-token form drops the
   future deltas, so its expectation is sum_t E_{context ~ q}[d KL(q(.|context) || p(.|context))] with
   the contexts' distribution held fixed: biased for the sequence KL (it ignores how an earlier token
   changes what later contexts occur), and unbiased for exactly what the dense per-token reverse KL
   (`generalized_jsd`, beta 1) differentiates on on-policy samples. The test checks that expectation
   on a small autoregressive model, and that it differs from the sequence-level gradient.

Measured bias at small K (bench/sparse_loss_bias.py, bench/results/sparse_loss_bias.json): teacher
SmolLM2-135M-Instruct in float32, the first 8 math test prompts, completed by their reference solutions
(data) or by the student at temperature 1 (own); students far from the teacher (the default student's
24-layer cut before healing) and near it (the teacher with 5% relative noise on every weight). Each cell:
the sparse mean loss's relative error against the dense one, and the cosine of their parameter gradients.

    completions (top-8 mass), student   beta   K = 8          K = 32         K = 128
    data (0.93), 24-layer cut           0.0      -6% 1.000      -2% 1.000      -1% 1.000
                                        0.9     -11% 0.995      -5% 0.999      -2% 1.000
                                        1.0     -22% 0.957     -11% 0.975      -6% 0.984
    own, T=1 (0.66), 24-layer cut       0.0     -39% 0.915     -23% 0.968     -12% 0.990
                                        0.9     -47% 0.856     -31% 0.920     -18% 0.964
                                        1.0     -52% 0.859     -35% 0.908     -22% 0.952
    data (0.93), teacher, 5% noise      0.0     -10% 0.998      -4% 1.000      -1% 1.000
                                        0.9     -12% 0.993      -4% 0.999      -1% 1.000
                                        1.0     -12% 0.990      -4% 0.999      -1% 1.000
    own, T=1 (0.81), teacher, 5% noise  0.0     -27% 0.988     -14% 0.997      -6% 0.999
                                        0.9     -26% 0.979     -13% 0.995      -6% 0.999
                                        1.0     -27% 0.974     -13% 0.994      -6% 0.998

On the data's text the teacher is sure (top-8 mass 0.93) and K = 32 keeps every gradient within cosine
0.975 of the dense one; on the student's own samples the teacher is less sure (0.66-0.81) and K = 128 is
needed for 0.95 far from the teacher. The reverse KL is the most sensitive, the forward KL the least.
The loss reads low (a lower bound), so compare runs at one K only. The tail clamp was active at 0-1.3%
of positions. `sampled_kl` on one on-policy batch (458 and 768 tokens): gradient cosine 0.59 (cut) and
0.80 (near) with the dense reverse KL's, identical for k1 and k3: unbiased, but noisy per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from selftaught.training.losses import CHUNK_ROWS, jsd_grad_rows, jsd_rows

PADDING_ID = -1  # marks an unused top-k slot, for positions with fewer than K entries
MASS_TOLERANCE = 0.01  # how far above 1 the teacher's top-k probabilities may sum (rounding) before refusal


@dataclass(frozen=True)
class SparseTeacher:
    """The teacher at N completion positions (any leading shape), without its full distribution.

    top_ids, top_log_probs: [..., K] its K most likely next tokens and their log-probabilities,
        normalised over the full vocabulary; an id of `PADDING_ID` marks an unused slot (its
        log-probability is ignored), so positions may carry fewer than K.
    token_ids, token_log_probs: [...] the completion's actual token (the student's sample on-policy,
        the data's or the teacher's off-policy) and the teacher's log-probability of it.
    """

    top_ids: torch.Tensor
    top_log_probs: torch.Tensor
    token_ids: torch.Tensor
    token_log_probs: torch.Tensor

    def __post_init__(self) -> None:
        if self.top_ids.shape != self.top_log_probs.shape:
            raise ValueError(
                f"top_ids {tuple(self.top_ids.shape)} and top_log_probs "
                f"{tuple(self.top_log_probs.shape)} differ in shape"
            )
        if (
            self.top_ids.shape[:-1] != self.token_ids.shape
            or self.token_ids.shape != self.token_log_probs.shape
        ):
            raise ValueError(
                f"positions differ: top_ids {tuple(self.top_ids.shape)}, token_ids "
                f"{tuple(self.token_ids.shape)}, token_log_probs {tuple(self.token_log_probs.shape)}"
            )

    @classmethod
    @torch.no_grad()
    def from_logits(cls, teacher_logits: torch.Tensor, token_ids: torch.Tensor, k: int) -> SparseTeacher:
        """What a server or a cache at top-k returns for an in-process teacher's logits [..., vocabulary]."""
        vocab = teacher_logits.shape[-1]
        tops, tokens = [], []
        for logits, ids in zip(
            teacher_logits.reshape(-1, vocab).split(CHUNK_ROWS),
            token_ids.reshape(-1).split(CHUNK_ROWS),
            strict=True,
        ):
            log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            tops.append(log_probs.topk(min(k, vocab), dim=-1))
            tokens.append(log_probs.gather(-1, ids[:, None])[:, 0])
        return cls(
            top_ids=torch.cat([t.indices for t in tops]).reshape(*token_ids.shape, -1),
            top_log_probs=torch.cat([t.values for t in tops]).reshape(*token_ids.shape, -1),
            token_ids=token_ids,
            token_log_probs=torch.cat(tokens).reshape(token_ids.shape),
        )


def _check(teacher: SparseTeacher, positions: torch.Size, vocab_size: int) -> None:
    """Refuse a teacher that does not describe these positions of this vocabulary."""
    if teacher.token_ids.shape != positions:
        raise ValueError(
            f"the teacher describes positions {tuple(teacher.token_ids.shape)}, "
            f"the student's logits {tuple(positions)}"
        )
    top = teacher.top_ids
    if top.numel() and (top.min() < PADDING_ID or top.max() >= vocab_size):
        raise ValueError(f"teacher top-k ids outside [0, {vocab_size}) (the student's vocabulary)")
    tokens = teacher.token_ids
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"actual token ids outside [0, {vocab_size}) (the student's vocabulary)")
    ordered = top.sort(dim=-1).values
    repeated = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] != PADDING_ID)
    if repeated.any():
        position = tuple(int(i) for i in repeated.any(-1).nonzero()[0])
        raise ValueError(f"teacher top-k ids repeat a token at position {position}: each must appear once")


def _teacher_bins(
    teacher: SparseTeacher, vocab_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support ids [N, K+1], which of them count [N, K+1], and the teacher's bin log-probs [N, K+2].

    Slot K is the actual token, counted only where it is not among the top-k. Slots that do not count
    point at the actual token (which always is in S), so that masking S out of the vocabulary is right.
    """
    n, k = teacher.token_ids.numel(), teacher.top_ids.shape[-1]
    top_ids, top_lp = teacher.top_ids.reshape(n, k), teacher.top_log_probs.reshape(n, k).to(dtype)
    token_ids, token_lp = teacher.token_ids.reshape(-1, 1), teacher.token_log_probs.reshape(-1, 1).to(dtype)
    in_top = (top_ids == token_ids).any(-1, keepdim=True)
    counted = torch.cat([top_ids != PADDING_ID, ~in_top], dim=-1)
    ids = torch.where(counted, torch.cat([top_ids, token_ids], dim=-1), token_ids)
    support_lp = torch.where(counted, torch.cat([top_lp, token_lp], dim=-1), -math.inf)

    log_mass = torch.logsumexp(support_lp, dim=-1, keepdim=True)
    if (log_mass > math.log1p(MASS_TOLERANCE)).any():
        worst = float(log_mass.max().exp())
        raise ValueError(
            f"the teacher's probabilities on its top-k and actual token sum to {worst:.4f} at some position: "
            "they must be log-probabilities normalised over the whole vocabulary (log_softmax of the logits)"
        )
    eps = torch.finfo(teacher.top_log_probs.dtype).eps
    tail_lp = torch.log(-torch.expm1(log_mass.clamp(max=math.log1p(-eps))))
    no_tail = counted.sum(-1, keepdim=True) == vocab_size
    return ids, counted, torch.cat([support_lp, tail_lp.masked_fill(no_tail, -math.inf)], dim=-1)


def _student_bins(logits: torch.Tensor, ids: torch.Tensor, counted: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The student's bin log-probs [rows, K+2] and log-normaliser [rows, 1], from its logits [rows, V]."""
    log_total = torch.logsumexp(logits, dim=-1, keepdim=True)
    on_support = torch.where(counted, logits.gather(-1, ids), -math.inf) - log_total
    tail = torch.logsumexp(logits.scatter(-1, ids, -math.inf), dim=-1, keepdim=True) - log_total
    return torch.cat([on_support, tail], dim=-1), log_total


class _SparseGeneralizedJSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, ids, counted, teacher_bins, beta):
        chunks = [
            _student_bins(logits.to(teacher_bins.dtype), chunk_ids, chunk_counted)
            for logits, chunk_ids, chunk_counted in zip(
                student_logits.split(CHUNK_ROWS),
                ids.split(CHUNK_ROWS),
                counted.split(CHUNK_ROWS),
                strict=True,
            )
        ]
        student_bins, log_total = (torch.cat(parts) for parts in zip(*chunks, strict=True))
        ctx.save_for_backward(student_logits, ids, student_bins, teacher_bins, log_total)
        ctx.beta = beta
        return jsd_rows(student_bins, teacher_bins, beta)

    @staticmethod
    def backward(ctx, grad_output):
        student_logits, ids, student_bins, teacher_bins, log_total = ctx.saved_tensors
        bin_grad = jsd_grad_rows(student_bins, teacher_bins, ctx.beta)
        bin_grad = (bin_grad - student_bins.exp() * bin_grad.sum(-1, keepdim=True)) * grad_output[:, None]
        grad = torch.empty_like(student_logits)
        for start in range(0, student_logits.shape[0], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            # a token outside S gets the tail bin's gradient times its share of the tail, q_v / q_tail
            tail_lp = student_bins[rows, -1:]
            log_tail_total = torch.where(tail_lp > -math.inf, log_total[rows] + tail_lp, math.inf)
            chunk = (student_logits[rows].to(log_total.dtype) - log_tail_total).exp_()
            chunk.mul_(bin_grad[rows, -1:])
            chunk.scatter_(-1, ids[rows], 0.0)  # tokens of S get their own bin's gradient instead
            chunk.scatter_add_(-1, ids[rows], bin_grad[rows, :-1])  # slots that do not count add 0
            grad[rows] = chunk.to(grad.dtype)
        return grad, None, None, None, None


def sparse_generalized_jsd(student_logits: torch.Tensor, teacher: SparseTeacher, beta: float) -> torch.Tensor:
    """Per-position generalized JSD on the teacher's top-k ∪ {actual token} plus a tail bin, shape
    `student_logits.shape[:-1]`.

    Computed in float32 at least (float64 for float64 inputs); only the student's logits get a gradient.
    Refuses (ValueError) a teacher whose ids fall outside the student's vocabulary, repeat within a
    position, or whose probabilities sum above 1 by more than rounding.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    vocab = student_logits.shape[-1]
    _check(teacher, student_logits.shape[:-1], vocab)
    dtype = torch.promote_types(
        torch.promote_types(student_logits.dtype, torch.float32), teacher.top_log_probs.dtype
    )
    ids, counted, teacher_bins = _teacher_bins(teacher, vocab, dtype)
    flat = _SparseGeneralizedJSD.apply(
        student_logits.reshape(-1, vocab), ids, counted, teacher_bins, float(beta)
    )
    return flat.reshape(student_logits.shape[:-1])


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits)[token] per row, in float32 at least, keeping no [rows x vocabulary] temporary
    (autograd through an upcast log_softmax would keep a float32 copy of the logits until backward)."""

    @staticmethod
    def forward(ctx, logits, ids, dtype):
        chunks = [
            (torch.logsumexp(rows.to(dtype), dim=-1), rows.gather(-1, row_ids[:, None])[:, 0].to(dtype))
            for rows, row_ids in zip(logits.split(CHUNK_ROWS), ids.split(CHUNK_ROWS), strict=True)
        ]
        log_total, picked = (torch.cat(parts) for parts in zip(*chunks, strict=True))
        ctx.save_for_backward(logits, ids, log_total)
        return picked - log_total

    @staticmethod
    def backward(ctx, grad_output):
        logits, ids, log_total = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            chunk = (logits[rows].to(log_total.dtype) - log_total[rows, None]).exp_()
            chunk.mul_(-grad_output[rows, None])
            chunk.scatter_add_(-1, ids[rows, None], grad_output[rows, None])
            grad[rows] = chunk.to(grad.dtype)
        return grad, None, None


def sampled_kl(
    student_logits: torch.Tensor, teacher: SparseTeacher, estimator: Literal["k1", "k3"] = "k1"
) -> torch.Tensor:
    """Per-position sampled-token reverse KL, shape `student_logits.shape[:-1]`; uses only
    `teacher.token_ids` and `teacher.token_log_probs`.

    The value is the estimator's estimate of KL(q || p) at the actual token (k1: log q/p; k3: r - 1 - log r,
    r = p/q); the gradient is the unbiased per-token policy gradient (log q(x) - log p(x)) d log q(x) for
    either (the module docstring derives it). The actual tokens must be samples from the student.
    """
    if estimator not in ("k1", "k3"):
        raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")
    vocab = student_logits.shape[-1]
    _check(teacher, student_logits.shape[:-1], vocab)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student_lp = _TokenLogProbs.apply(student_logits.reshape(-1, vocab), teacher.token_ids.reshape(-1), dtype)
    log_ratio = (student_lp - teacher.token_log_probs.reshape(-1).to(dtype)).detach()  # log q/p = -A
    estimate = log_ratio if estimator == "k1" else torch.expm1(-log_ratio) + log_ratio
    # value: the estimate; gradient: log_ratio * d log q (the detached difference is 0 in value)
    surrogate = estimate + log_ratio * (student_lp - student_lp.detach())
    return surrogate.reshape(student_logits.shape[:-1])
