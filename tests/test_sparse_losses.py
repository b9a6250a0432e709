"""Tests for `selftaught.training.sparse_losses`: top-k losses with a tail bin, and sampled-token reverse KL.

The sparse losses are checked against the dense `generalized_jsd` (equal, value and gradient, when the
support covers the vocabulary; a lower bound rising with K below that), an independent float64 numpy
computation of the binned divergence, finite differences, and the behaviour the tail bin exists for:
moving student mass off the support must cost. `sampled_kl` is checked by its expected gradient: exactly
(enumerating the tokens) at one position, and by Monte Carlo on a small autoregressive model against the
exact per-token reverse-KL gradient, with a tolerance from the samples' standard error.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selftaught.training.losses import generalized_jsd
from selftaught.training.sparse_losses import PADDING_ID, SparseTeacher, sampled_kl, sparse_generalized_jsd

BETAS = [0.0, 0.3, 0.5, 0.9, 1.0]
VOCAB = 50


def random_logits(seed: int, shape: tuple[int, ...], scale: float = 3.0) -> torch.Tensor:
    """Float64 logits with a few large-magnitude entries mixed in (peaked rows and very unlikely tokens)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    flat = logits.view(-1)
    idx = torch.randperm(flat.numel(), generator=gen)[:12]
    flat[idx] = torch.where(torch.rand(12, generator=gen) < 0.5, -1.0, 1.0).double() * 60.0
    return logits


def random_tokens(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def student_grad(loss_fn, student: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    student = student.detach().clone().requires_grad_()
    out = loss_fn(student)
    (out * (1.0 if weights is None else weights)).sum().backward()
    return student.grad


# --------------------------------------------------------------------------------------------------------
# Independent float64 reference of the binned divergence, from the definition (numpy, no torch)
# --------------------------------------------------------------------------------------------------------


def ref_kl(p: np.ndarray, q: np.ndarray) -> float:
    nonzero = p > 0
    return float((p[nonzero] * np.log(p[nonzero] / q[nonzero])).sum())


def ref_binned_jsd(student_logits: np.ndarray, teacher: SparseTeacher, row: int, beta: float) -> float:
    """One position: the set S, one bin per token of S and one for the rest, on both sides."""
    z = student_logits - student_logits.max()
    q_full = np.exp(z) / np.exp(z).sum()
    support = {
        int(i): float(lp) for i, lp in zip(teacher.top_ids[row], teacher.top_log_probs[row], strict=True)
    }
    support.pop(PADDING_ID, None)
    support.setdefault(int(teacher.token_ids[row]), float(teacher.token_log_probs[row]))
    ids = sorted(support)
    p = np.array([math.exp(support[i]) for i in ids] + [0.0])
    q = np.array([q_full[i] for i in ids] + [0.0])
    if len(ids) < len(q_full):
        # the teacher's tail is 1 - its mass on S, never below eps: below it, it is rounding (documented)
        p[-1] = max(1.0 - p[:-1].sum(), np.finfo(np.float64).eps)
        q[-1] = np.delete(q_full, ids).sum()
    if beta == 0.0:
        return ref_kl(p, q)
    if beta == 1.0:
        return ref_kl(q, p)
    m = beta * p + (1.0 - beta) * q
    return beta * ref_kl(p, m) + (1.0 - beta) * ref_kl(q, m)


# --------------------------------------------------------------------------------------------------------
# 1. Exact at K = vocabulary; a lower bound rising with K below it
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", BETAS)
def test_full_vocabulary_equals_dense_loss_and_gradient(beta: float) -> None:
    """300 positions (across the 128-row chunks), every token in the support: the dense loss, exactly."""
    shape = (3, 100, VOCAB)
    student, teacher_logits = random_logits(0, shape), random_logits(1, shape)
    teacher = SparseTeacher.from_logits(teacher_logits, random_tokens(2, shape[:-1]), k=VOCAB)
    weights = torch.rand(shape[:-1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    sparse = sparse_generalized_jsd(student, teacher, beta)
    dense = generalized_jsd(student, teacher_logits, beta)
    assert sparse.dtype == torch.float64 and sparse.shape == shape[:-1]
    torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        student_grad(lambda s: sparse_generalized_jsd(s, teacher, beta), student, weights),
        student_grad(lambda s: generalized_jsd(s, teacher_logits, beta), student, weights),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("beta", BETAS)
def test_matches_float64_reference_at_small_k(beta: float) -> None:
    student, teacher_logits = random_logits(4, (40, VOCAB)), random_logits(5, (40, VOCAB))
    teacher = SparseTeacher.from_logits(teacher_logits, random_tokens(6, (40,)), k=5)
    # some actual tokens lie outside the top-k, and some teacher tails are below eps (a logit of 60)
    assert (teacher.top_ids != teacher.token_ids[:, None]).all(-1).any()
    assert (teacher.top_log_probs.exp().sum(-1) == 1.0).any()
    out = sparse_generalized_jsd(student, teacher, beta)
    expected = [ref_binned_jsd(student[r].numpy(), teacher, r, beta) for r in range(40)]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_lower_bound_of_the_dense_loss_rising_with_k(beta: float) -> None:
    """Coarse-graining never increases the divergence: the loss rises with K up to the dense loss."""
    student, teacher_logits = random_logits(7, (60, VOCAB)), random_logits(8, (60, VOCAB))
    tokens = random_tokens(9, (60,))
    losses = [
        sparse_generalized_jsd(student, SparseTeacher.from_logits(teacher_logits, tokens, k), beta)
        for k in (0, 1, 4, 16, VOCAB - 1, VOCAB)
    ]
    for smaller, larger in zip(losses, losses[1:], strict=False):
        # up to the rounding of a teacher tail taken as 1 - (a sum close to 1): 1e-8 relative at K = V - 1
        assert (smaller <= larger * (1 + 1e-9)).all()
    assert (losses[1] < losses[-1] - 1e-3).any()
    torch.testing.assert_close(losses[-1], generalized_jsd(student, teacher_logits, beta), rtol=0, atol=1e-9)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("k", [1, 4])
def test_gradcheck_float64(beta: float, k: int) -> None:
    student = random_logits(10, (2, 3, 9)).div(10).requires_grad_()
    teacher = SparseTeacher.from_logits(
        random_logits(11, (2, 3, 9)).div(10), random_tokens(12, (2, 3)) % 9, k
    )
    assert torch.autograd.gradcheck(lambda s: sparse_generalized_jsd(s, teacher, beta), (student,))


# --------------------------------------------------------------------------------------------------------
# 2. The tail bin: mass moved off the support costs
# --------------------------------------------------------------------------------------------------------


def move_mass_off_support(teacher_logits: torch.Tensor, teacher: SparseTeacher, shift: float) -> torch.Tensor:
    """The teacher's own logits with every token outside the top-k and the actual token raised by `shift`."""
    support = torch.zeros_like(teacher_logits, dtype=torch.bool)
    support.scatter_(-1, teacher.top_ids, True).scatter_(-1, teacher.token_ids[:, None], True)
    return teacher_logits + shift * (~support)


def support_only_reverse_kl(student_logits: torch.Tensor, teacher: SparseTeacher) -> torch.Tensor:
    """sum over the top-k and the actual token of q_v log(q_v / p_v), no tail bin (verl before PR 7855)."""
    outside_top = (teacher.top_ids != teacher.token_ids[:, None]).all(-1, keepdim=True)
    teacher_lp = torch.cat([teacher.top_log_probs, teacher.token_log_probs[:, None]], -1)
    student_lp = F.log_softmax(student_logits, -1).gather(
        -1, torch.cat([teacher.top_ids, teacher.token_ids[:, None]], -1)
    )
    counted = torch.cat([torch.ones_like(outside_top).expand_as(teacher.top_ids), outside_top], -1)
    return (counted * student_lp.exp() * (student_lp - teacher_lp)).sum(-1)


@pytest.mark.parametrize("beta", BETAS)
def test_tail_bin_makes_mass_moved_off_the_support_cost(beta: float) -> None:
    teacher_logits = random_logits(13, (30, VOCAB)).clamp(-10, 10)
    teacher = SparseTeacher.from_logits(teacher_logits, random_tokens(14, (30,)), k=4)
    shifts = [0.0, 0.5, 1.0, 2.0, 4.0]
    losses = [
        sparse_generalized_jsd(move_mass_off_support(teacher_logits, teacher, c), teacher, beta)
        for c in shifts
    ]
    assert losses[0].abs().max() < 1e-9  # the student matches the teacher: nothing to learn
    for before, after in zip(losses, losses[1:], strict=False):
        assert (after > before).all()
    # and descending the gradient lowers the student's logits off the support: the mass comes back
    student = move_mass_off_support(teacher_logits, teacher, 2.0)
    grad = student_grad(lambda s: sparse_generalized_jsd(s, teacher, beta), student)
    off = move_mass_off_support(torch.zeros_like(student), teacher, 1.0).bool()
    assert (grad.masked_select(off) > 0).all()


def test_without_the_tail_bin_reverse_kl_rewards_mass_moved_off_the_support() -> None:
    """What the tail bin prevents: the reverse KL summed over the support is lower for a student that left it
    than for one that matches the teacher (the sum is negative: q log(q / p) < 0 wherever q < p)."""
    teacher_logits = random_logits(13, (30, VOCAB)).clamp(-10, 10)
    teacher = SparseTeacher.from_logits(teacher_logits, random_tokens(14, (30,)), k=4)
    without = [
        support_only_reverse_kl(move_mass_off_support(teacher_logits, teacher, c), teacher) for c in (0, 2, 4)
    ]
    assert (without[1] < without[0]).all() and (without[2] < without[0]).all()  # below the match's 0
    with_bin = [
        sparse_generalized_jsd(move_mass_off_support(teacher_logits, teacher, c), teacher, 1.0)
        for c in (0, 2, 4)
    ]
    assert (with_bin[2] > with_bin[1]).all() and (with_bin[1] > with_bin[0]).all()


# --------------------------------------------------------------------------------------------------------
# 3. The support: the actual token, padding
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_actual_token_outside_the_top_k_gets_its_own_bin(beta: float) -> None:
    """Top-k plus an actual token outside it is the top-k with that token added (not a tail token)."""
    student, teacher_logits = random_logits(15, (20, VOCAB)), random_logits(16, (20, VOCAB))
    top3 = SparseTeacher.from_logits(teacher_logits, torch.zeros(20, dtype=torch.long), k=3)
    outside = torch.full((20,), VOCAB - 1)
    outside = torch.where((top3.top_ids == outside[:, None]).any(-1), VOCAB - 2, outside)
    outside_lp = F.log_softmax(teacher_logits, -1).gather(-1, outside[:, None])[:, 0]
    with_token = SparseTeacher(top3.top_ids, top3.top_log_probs, outside, outside_lp)
    as_top4 = SparseTeacher(
        torch.cat([top3.top_ids, outside[:, None]], -1),
        torch.cat([top3.top_log_probs, outside_lp[:, None]], -1),
        top3.top_ids[:, 0],
        top3.top_log_probs[:, 0],
    )
    torch.testing.assert_close(
        sparse_generalized_jsd(student, with_token, beta), sparse_generalized_jsd(student, as_top4, beta)
    )
    assert not torch.allclose(
        sparse_generalized_jsd(student, with_token, beta),
        sparse_generalized_jsd(
            student, SparseTeacher.from_logits(teacher_logits, top3.top_ids[:, 0], 3), beta
        ),
    )


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_padding_slots_are_ignored(beta: float) -> None:
    """Positions with fewer than K entries: padded slots (any log-probability) change nothing."""
    student, teacher_logits = random_logits(17, (20, VOCAB)), random_logits(18, (20, VOCAB))
    teacher = SparseTeacher.from_logits(teacher_logits, random_tokens(19, (20,)), k=4)
    padded = SparseTeacher(
        torch.cat([teacher.top_ids, torch.full((20, 3), PADDING_ID)], -1),
        torch.cat([teacher.top_log_probs, torch.full((20, 3), 5.0, dtype=torch.float64)], -1),
        teacher.token_ids,
        teacher.token_log_probs,
    )
    torch.testing.assert_close(
        sparse_generalized_jsd(student, padded, beta), sparse_generalized_jsd(student, teacher, beta)
    )
    torch.testing.assert_close(
        student_grad(lambda s: sparse_generalized_jsd(s, padded, beta), student),
        student_grad(lambda s: sparse_generalized_jsd(s, teacher, beta), student),
    )


# --------------------------------------------------------------------------------------------------------
# 4. Numerics: a teacher whose top-k mass rounds to 1, dtypes, memory
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", BETAS)
def test_teacher_top_k_mass_rounding_to_one_stays_finite(beta: float) -> None:
    """A float32 teacher certain of one token: its top-k mass rounds to 1 (or above); the tail is clamped
    to eps, so the reverse KL of a student with mass outside stays finite and its gradient too."""
    student = torch.randn(4, VOCAB)
    top_ids = torch.arange(4)[:, None] + torch.arange(0, 8, 4)  # 2 tokens per position
    top_log_probs = torch.tensor([[0.0, -30.0], [1e-7, -40.0], [-1e-9, -20.0], [2e-7, -25.0]])
    teacher = SparseTeacher(top_ids, top_log_probs, top_ids[:, 0], top_log_probs[:, 0])
    student = student.requires_grad_()
    loss = sparse_generalized_jsd(student, teacher, beta)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(student.grad).all()
    assert (loss > 0).all()


def test_unnormalised_teacher_is_refused() -> None:
    """Logits passed as log-probabilities sum far above 1: refused, not clamped into a meaningless loss."""
    teacher_logits = random_logits(20, (5, VOCAB)).float()
    top = teacher_logits.topk(4, -1)
    tokens = top.indices[:, 0]
    teacher = SparseTeacher(top.indices, top.values, tokens, top.values[:, 0])
    with pytest.raises(ValueError, match="normalised over the whole vocabulary"):
        sparse_generalized_jsd(torch.randn(5, VOCAB), teacher, 0.5)


def test_bad_teacher_is_refused() -> None:
    teacher = SparseTeacher.from_logits(random_logits(21, (5, VOCAB)), random_tokens(22, (5,)), k=4)
    student = torch.randn(5, VOCAB)
    with pytest.raises(ValueError, match="outside"):
        sparse_generalized_jsd(student[:, : VOCAB - 10], teacher, 0.5)  # ids beyond a smaller vocabulary
    with pytest.raises(ValueError, match="positions"):
        sparse_generalized_jsd(student[:4], teacher, 0.5)
    repeated = SparseTeacher(
        torch.cat([teacher.top_ids, teacher.top_ids[:, :1]], -1),
        torch.cat([teacher.top_log_probs, teacher.top_log_probs[:, :1]], -1),
        teacher.token_ids,
        teacher.token_log_probs,
    )
    with pytest.raises(ValueError, match="repeat"):
        sparse_generalized_jsd(student, repeated, 0.5)
    with pytest.raises(ValueError, match="shape"):
        SparseTeacher(
            teacher.top_ids, teacher.top_log_probs[:, :3], teacher.token_ids, teacher.token_log_probs
        )
    for beta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            sparse_generalized_jsd(student, teacher, beta)
    with pytest.raises(ValueError, match="estimator"):
        sampled_kl(student, teacher, "k2")


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_bf16_student_is_computed_in_float32(beta: float) -> None:
    student = random_logits(23, (20, VOCAB)).to(torch.bfloat16)
    teacher = SparseTeacher.from_logits(random_logits(24, (20, VOCAB)), random_tokens(25, (20,)), k=8)
    teacher = SparseTeacher(
        teacher.top_ids, teacher.top_log_probs.float(), teacher.token_ids, teacher.token_log_probs.float()
    )
    out = sparse_generalized_jsd(student, teacher, beta)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, sparse_generalized_jsd(student.float(), teacher, beta), rtol=1e-6, atol=1e-7
    )
    grad = student_grad(lambda s: sparse_generalized_jsd(s, teacher, beta), student)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(
        grad.float(),
        student_grad(lambda s: sparse_generalized_jsd(s, teacher, beta), student.float()),
        rtol=1e-2,
        atol=1e-4,
    )


@pytest.mark.parametrize("loss", ["sparse_jsd", "sampled_kl"])
def test_keeps_no_vocabulary_sized_tensor_for_backward(loss: str) -> None:
    """What autograd keeps until backward: the student's logits themselves, and [tokens x (K + 2)] tensors,
    never a [tokens x vocabulary] copy (a bf16 student's float32 upcast would be the usual culprit)."""
    rows = 300
    student = random_logits(26, (rows, VOCAB)).to(torch.bfloat16).requires_grad_()
    teacher = SparseTeacher.from_logits(random_logits(27, (rows, VOCAB)), random_tokens(28, (rows,)), k=8)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = (
            sparse_generalized_jsd(student, teacher, 0.5)
            if loss == "sparse_jsd"
            else sampled_kl(student, teacher)
        )
    out.sum().backward()
    assert any(t.data_ptr() == student.data_ptr() for t in saved)
    large = [
        tuple(t.shape) for t in saved if t.numel() >= rows * VOCAB / 2 and t.data_ptr() != student.data_ptr()
    ]
    assert not large


def test_from_logits_is_the_teachers_top_k() -> None:
    logits = random_logits(29, (2, 6, VOCAB))
    tokens = random_tokens(30, (2, 6))
    teacher = SparseTeacher.from_logits(logits, tokens, k=5)
    log_probs = F.log_softmax(logits, -1)
    top = log_probs.topk(5, -1)
    torch.testing.assert_close(teacher.top_ids, top.indices)
    torch.testing.assert_close(teacher.top_log_probs, top.values)
    torch.testing.assert_close(teacher.token_log_probs, log_probs.gather(-1, tokens[..., None])[..., 0])
    assert SparseTeacher.from_logits(logits, tokens, k=VOCAB + 10).top_ids.shape == (2, 6, VOCAB)


# --------------------------------------------------------------------------------------------------------
# 5. Sampled-token reverse KL
# --------------------------------------------------------------------------------------------------------


def one_token_teachers(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> list[SparseTeacher]:
    """For one position of V tokens: V teachers, each reporting one possible actual token."""
    vocab = student_logits.shape[-1]
    tokens = torch.arange(vocab)
    teacher_lp = F.log_softmax(teacher_logits, -1)[0]
    return [
        SparseTeacher(
            torch.zeros(1, 0, dtype=torch.long),
            teacher_lp.new_zeros(1, 0),
            tokens[x : x + 1],
            teacher_lp[x : x + 1],
        )
        for x in range(vocab)
    ]


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_sampled_kl_is_unbiased_in_value_and_gradient_at_one_position(estimator: str) -> None:
    """Averaged over every token x with weight q(x): the reverse KL and its gradient, exactly."""
    student, teacher_logits = random_logits(31, (1, 12)).div(3), random_logits(32, (1, 12)).div(3)
    q = F.softmax(student, -1)[0]
    expected_value = generalized_jsd(student, teacher_logits, 1.0)
    expected_grad = student_grad(lambda s: generalized_jsd(s, teacher_logits, 1.0), student)
    value, grad = torch.zeros(1, dtype=torch.float64), torch.zeros_like(student)
    for x, teacher in enumerate(one_token_teachers(student, teacher_logits)):
        value += q[x] * sampled_kl(student, teacher, estimator).detach()
        grad += q[x] * student_grad(lambda s, teacher=teacher: sampled_kl(s, teacher, estimator), student)
        if estimator == "k3":
            assert sampled_kl(student, teacher, estimator) >= 0
    torch.testing.assert_close(value, expected_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_k3_as_an_advantage_alone_would_be_biased() -> None:
    """Why `sampled_kl` keeps k3's pathwise term: the score-function term k3 * d log q alone averages to
    d KL(q||p) + (p - q) in the logits, not the reverse KL's gradient (the module docstring's algebra)."""
    student, teacher_logits = random_logits(31, (1, 12)).div(3), random_logits(32, (1, 12)).div(3)
    q, p = F.softmax(student, -1)[0], F.softmax(teacher_logits, -1)[0]
    score_only = torch.zeros_like(student)
    for x in range(12):
        log_r = math.log(p[x] / q[x])
        k3 = math.expm1(log_r) - log_r
        score = -q.clone()[None]
        score[0, x] += 1.0  # d log q(x) / d logits
        score_only += q[x] * k3 * score
    reverse_kl_grad = student_grad(lambda s: generalized_jsd(s, teacher_logits, 1.0), student)
    torch.testing.assert_close(score_only, reverse_kl_grad + (p - q)[None], rtol=1e-10, atol=1e-12)
    assert (score_only - reverse_kl_grad).abs().max() > 0.05


class TinyAutoregressiveModel:
    """Next-token logits W[previous token] + b[position] over `vocab` tokens, for sequences of `length`."""

    def __init__(self, seed: int, vocab: int = 4, length: int = 3, scale: float = 1.0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.vocab, self.length = vocab, length
        self.W = (scale * torch.randn(vocab + 1, vocab, generator=gen, dtype=torch.float64)).requires_grad_()
        self.b = (scale * torch.randn(length, vocab, generator=gen, dtype=torch.float64)).requires_grad_()

    def logits(self, sequences: torch.Tensor) -> torch.Tensor:
        """[n, length, vocab]: the logits at each position given the sequences' previous tokens."""
        previous = torch.cat([torch.full_like(sequences[:, :1], self.vocab), sequences[:, :-1]], dim=1)
        return self.W[previous] + self.b

    def sample(self, n: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        sequences = torch.zeros(n, self.length, dtype=torch.long)
        previous = torch.full((n,), self.vocab)
        with torch.no_grad():
            for t in range(self.length):
                probs = F.softmax(self.W[previous] + self.b[t], -1)
                sequences[:, t] = previous = torch.multinomial(probs, 1, generator=gen)[:, 0]
        return sequences

    def all_sequences(self) -> torch.Tensor:
        grids = torch.meshgrid(*[torch.arange(self.vocab)] * self.length, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=1)

    def params(self) -> list[torch.Tensor]:
        return [self.W, self.b]


def flat_grad(output: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(output, params)])


def per_token_reverse_kl_gradient(
    student: TinyAutoregressiveModel, teacher: TinyAutoregressiveModel
) -> torch.Tensor:
    """Exact gradient of sum_t E_{contexts ~ q}[KL(q(.|context) || p(.|context))], the contexts' distribution
    held fixed: the dense per-token reverse KL (`generalized_jsd`, beta 1) averaged over every sequence."""
    sequences = student.all_sequences()
    with torch.no_grad():
        q_sequence = (
            F.log_softmax(student.logits(sequences), -1)
            .gather(-1, sequences[..., None])[..., 0]
            .sum(-1)
            .exp()
        )
    per_token = generalized_jsd(student.logits(sequences), teacher.logits(sequences).detach(), 1.0)
    # each sequence's positions, weighted by the sequence's probability: E over contexts, each position's KL
    return flat_grad((q_sequence[:, None] * per_token).sum(), student.params())


def sequence_reverse_kl_gradient(
    student: TinyAutoregressiveModel, teacher: TinyAutoregressiveModel
) -> torch.Tensor:
    """Exact gradient of the sequence-level KL(q || p) = sum_y q(y) log(q(y) / p(y))."""
    sequences = student.all_sequences()
    log_q = F.log_softmax(student.logits(sequences), -1).gather(-1, sequences[..., None])[..., 0].sum(-1)
    log_p = (
        F.log_softmax(teacher.logits(sequences).detach(), -1).gather(-1, sequences[..., None])[..., 0].sum(-1)
    )
    return flat_grad((log_q.exp() * (log_q - log_p)).sum(), student.params())


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_sampled_kl_expected_gradient_on_an_autoregressive_model(estimator: str) -> None:
    """On 20,000 sequences sampled from a small autoregressive student: the mean per-sequence gradient of
    `sampled_kl` matches the exact per-token reverse-KL gradient in every coordinate, within a z of the
    samples' standard error (Bonferroni over the coordinates, family-wise 1e-3), and tells it apart from the
    sequence-level KL's gradient (the documented bias of per-token credit)."""
    student, teacher = TinyAutoregressiveModel(seed=33), TinyAutoregressiveModel(seed=34, scale=1.5)
    n = 20_000
    sequences = student.sample(n, seed=35)
    logits = student.logits(sequences)
    with torch.no_grad():
        teacher_lp = F.log_softmax(teacher.logits(sequences), -1)
    sparse = SparseTeacher(
        torch.zeros(n, student.length, 0, dtype=torch.long),
        teacher_lp[..., :0],
        sequences,
        teacher_lp.gather(-1, sequences[..., None])[..., 0],
    )
    (logits_grad,) = torch.autograd.grad(sampled_kl(logits, sparse, estimator).sum(), logits)
    # one sequence's gradient in W and b: its positions' logit gradients, placed at (previous token, position)
    previous = torch.cat([torch.full_like(sequences[:, :1], student.vocab), sequences[:, :-1]], dim=1)
    per_sequence_W = torch.einsum(
        "ntp,ntv->npv", F.one_hot(previous, student.vocab + 1).double(), logits_grad
    )
    per_sequence = torch.cat([per_sequence_W.reshape(n, -1), logits_grad.reshape(n, -1)], dim=1)

    mean, standard_error = per_sequence.mean(0), per_sequence.std(0) / math.sqrt(n)
    z = NormalDist().inv_cdf(1 - 1e-3 / (2 * mean.numel()))
    exact = per_token_reverse_kl_gradient(student, teacher)
    assert ((mean - exact).abs() <= z * standard_error).all(), ((mean - exact) / standard_error).abs().max()
    sequence_level = sequence_reverse_kl_gradient(student, teacher)
    assert ((mean - sequence_level).abs() > 2 * z * standard_error).any()
