"""Distribution-level losses between a student and a teacher whose vocabularies differ.

- `shared_support_jsd`, where both models predict the next token from the same text (the student's token
  starts where a teacher token starts: `CompletionAlignment.on_boundary`): each distribution is mapped onto
  the strings both vocabularies hold, plus one tail bin for the rest of its own vocabulary
  (`SharedSupport`), and the two are compared exactly there with the generalized JSD of
  `losses.generalized_jsd` (beta 0 forward KL, beta 1 reverse KL). The tail bin keeps it a divergence
  between two distributions: restricted to the support alone, a loss can be lowered by moving the
  student's mass off the support (verl measured its clamp active in 89% of steps before adding one). With
  one tokenizer on both sides every token is its own shared string, there is no tail, and this is the
  dense loss.
- `uld_distance`, elsewhere: the Universal Logit Distillation loss (Boizard et al. 2024, arXiv 2402.12030),
  the L1 distance between the two probability vectors sorted in decreasing order, the shorter padded with
  zeros (the Wasserstein distance when every token is one unit from every other). It needs no token
  correspondence at all, and that is its weakness: it compares the distributions' shapes, so a student
  sure of the wrong token scores as well as one sure of the right one. Hence the fallback, not the default.
- The sampled-token signal needs no loss here: `CompletionAlignment.spread` gives each student token the
  teacher's log-probability of its text, which is what a sampled-token reverse KL (log q - log p) reads.

Written here: TRL's GOLD trainer has ULD but computes it inside its trainer over top-k, and no library
maps two vocabularies onto their shared strings with a tail bin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selftaught.models.cross_tokenizer import SharedSupport
from selftaught.training.losses import CHUNK_ROWS, generalized_jsd


def support_log_probs(
    logits: torch.Tensor, kept: torch.Tensor, rest: torch.Tensor, tail: bool
) -> torch.Tensor:
    """[rows, len(kept) (+1)]: the log-probabilities of the `kept` tokens, then (when `tail`) of all the
    `rest` together, computed over the tokenizer's tokens only (padded embedding rows dropped), in float32
    at least. A tail with no tokens has log-probability -inf."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_probs = F.log_softmax(logits[..., : len(kept) + len(rest)].to(dtype), dim=-1)
    binned = log_probs[..., kept.to(logits.device)]
    if not tail:
        return binned
    if len(rest):
        rest_log_prob = torch.logsumexp(log_probs[..., rest.to(logits.device)], dim=-1, keepdim=True)
    else:
        rest_log_prob = binned.new_full((*binned.shape[:-1], 1), float("-inf"))
    return torch.cat([binned, rest_log_prob], dim=-1)


def has_tail(support: SharedSupport) -> bool:
    """Whether either vocabulary holds strings the other lacks (then each side has a tail bin)."""
    return bool(len(support.student_rest) or len(support.teacher_rest))


@torch.no_grad()
def teacher_on_support(teacher_logits: torch.Tensor, support: SharedSupport) -> torch.Tensor:
    """[rows, shared strings (+1)]: the teacher's log-probabilities over the shared strings (and its tail),
    computed in row chunks: what `shared_support_jsd` compares with, and all a caller must keep of the
    teacher's full logits."""
    tail = has_tail(support)
    chunks = [
        support_log_probs(rows, support.teacher_ids, support.teacher_rest, tail)
        for rows in teacher_logits.split(CHUNK_ROWS)
    ]
    return torch.cat(chunks) if chunks else teacher_logits.new_zeros(0, len(support.teacher_ids) + tail)


def shared_support_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, support: SharedSupport, beta: float
) -> torch.Tensor:
    """Per row, the generalized JSD between the student's and the teacher's next-token distributions over
    the shared strings plus a tail bin; rows are positions where both predict from the same text. Only
    the student's logits get a gradient."""
    return support_jsd(student_logits, teacher_on_support(teacher_logits, support), support, beta)


def support_jsd(
    student_logits: torch.Tensor, teacher_binned: torch.Tensor, support: SharedSupport, beta: float
) -> torch.Tensor:
    """`shared_support_jsd` against the teacher already on the support (`teacher_on_support`)."""
    student = support_log_probs(student_logits, support.student_ids, support.student_rest, has_tail(support))
    # log-probabilities are valid logits: generalized_jsd's softmax leaves them as they are
    return generalized_jsd(student, teacher_binned, beta)


def uld_distance(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_vocab: int, teacher_vocab: int
) -> torch.Tensor:
    """Per row, the ULD distance: sum_i |s_(i) - t_(i)| over the two distributions sorted in decreasing
    order (each over its tokenizer's first `*_vocab` columns), the shorter one padded with zeros. In [0, 2];
    only the student's logits get a gradient."""
    return uld_against(student_logits, teacher_sorted_probs(teacher_logits, teacher_vocab), student_vocab)


@torch.no_grad()
def teacher_sorted_probs(teacher_logits: torch.Tensor, teacher_vocab: int) -> torch.Tensor:
    """The teacher's side of ULD: its probabilities sorted in decreasing order, in row chunks."""
    chunks = [_sorted_probs(rows, teacher_vocab) for rows in teacher_logits.split(CHUNK_ROWS)]
    return torch.cat(chunks) if chunks else teacher_logits.new_zeros(0, teacher_vocab, dtype=torch.float32)


def uld_against(
    student_logits: torch.Tensor, teacher_sorted: torch.Tensor, student_vocab: int
) -> torch.Tensor:
    """`uld_distance` against the teacher's sorted probabilities (`teacher_sorted_probs`)."""
    student = _sorted_probs(student_logits, student_vocab)
    common = min(student_vocab, teacher_sorted.shape[-1])
    shared = (student[..., :common] - teacher_sorted[..., :common]).abs().sum(-1)
    return shared + student[..., common:].sum(-1) + teacher_sorted[..., common:].sum(-1)


def _sorted_probs(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    return F.softmax(logits[..., :vocab].float(), dim=-1).sort(dim=-1, descending=True).values
