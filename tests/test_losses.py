"""Tests for `selftaught.training.losses.generalized_jsd`.

The function is checked against (1) an independent float64 numpy computation written straight from the
definition, (2) TRL's `GKDTrainer.generalized_jsd_loss`, and (3) closed forms for the direction of the two
limits and for the gradient, so that a swapped mixture, limits computed as 0, or a silent bf16 computation
each make a test fail.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selftaught.training.losses import generalized_jsd

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]
SHAPE = (3, 5, 50)


# --------------------------------------------------------------------------------------------------------
# Independent float64 reference, from the definition (no torch, no kl_div)
# --------------------------------------------------------------------------------------------------------


def ref_softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64, with max-subtraction."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def ref_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(P || Q) = sum_v p_v * log(p_v / q_v) over the last axis, with 0 * log 0 = 0."""
    terms = np.zeros_like(p)
    nonzero = p > 0
    terms[nonzero] = p[nonzero] * np.log(p[nonzero] / q[nonzero])
    return terms.sum(axis=-1)


def ref_jsd_with_mixture(p_teacher: np.ndarray, p_student: np.ndarray, beta: float, mix: float) -> np.ndarray:
    """beta * KL(P_T || M) + (1 - beta) * KL(P_S || M) with M = mix * P_T + (1 - mix) * P_S."""
    m = mix * p_teacher + (1.0 - mix) * p_student
    return beta * ref_kl(p_teacher, m) + (1.0 - beta) * ref_kl(p_student, m)


def ref_generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float
) -> np.ndarray:
    """Generalized JSD per position in float64; beta = 0 / 1 are forward / reverse KL (the paper's limits)."""
    p_s = ref_softmax(student_logits.detach().double().numpy())
    p_t = ref_softmax(teacher_logits.detach().double().numpy())
    if beta == 0.0:
        return ref_kl(p_t, p_s)
    if beta == 1.0:
        return ref_kl(p_s, p_t)
    return ref_jsd_with_mixture(p_t, p_s, beta, mix=beta)


# --------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------


def random_logits(seed: int, shape: tuple[int, ...] = SHAPE, scale: float = 3.0) -> torch.Tensor:
    """Float32 logits with a few large-magnitude entries mixed in (peaked rows and very unlikely tokens)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen) * scale
    n_large = 12
    flat = logits.view(-1)
    idx = torch.randperm(flat.numel(), generator=gen)[:n_large]
    signs = torch.where(torch.rand(n_large, generator=gen) < 0.5, -1.0, 1.0)
    flat[idx] = signs * (40.0 + 60.0 * torch.rand(n_large, generator=gen))
    return logits


@pytest.fixture(scope="module")
def logits_pair() -> tuple[torch.Tensor, torch.Tensor]:
    return random_logits(seed=0), random_logits(seed=1)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    """Labels with -100 on a few positions, including one fully masked row tail."""
    lab = torch.arange(SHAPE[0] * SHAPE[1]).view(SHAPE[:2]) % SHAPE[2]
    lab[0, :2] = -100
    lab[1, 4] = -100
    lab[2, 1:] = -100
    return lab


def test_inputs_have_large_logits(logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits_pair
    assert student.abs().max() > 40 and teacher.abs().max() > 40


# --------------------------------------------------------------------------------------------------------
# 1. Agreement with the float64 reference
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", BETAS)
def test_matches_float64_reference(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits_pair
    out = generalized_jsd(student, teacher, beta)
    assert out.shape == SHAPE[:-1]
    assert out.dtype == torch.float32
    expected = ref_generalized_jsd(student, teacher, beta)
    # The values are O(0.1 .. 100); atol only guards positions where the divergence is tiny.
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_float64_inputs_stay_float64(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = (x.double() for x in logits_pair)
    out = generalized_jsd(student, teacher, beta)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(
        out.numpy(), ref_generalized_jsd(student, teacher, beta), rtol=1e-10, atol=1e-12
    )


# --------------------------------------------------------------------------------------------------------
# 2. Agreement with TRL
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_jsd_loss():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trl.experimental warns on import; that is expected
            from trl.experimental.gkd import GKDTrainer
    except ImportError as exc:  # pragma: no cover - depends on the installed TRL
        pytest.skip(f"trl.experimental.gkd.GKDTrainer is not importable: {exc}")
    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("beta", BETAS)
def test_matches_trl_batchmean_with_labels(
    beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, trl_jsd_loss
) -> None:
    student, teacher = logits_pair
    mask = labels != -100
    n_valid = int(mask.sum())
    assert 0 < n_valid < labels.numel()

    ours = generalized_jsd(student, teacher, beta)
    ours_mean = ours[mask].sum() / n_valid
    theirs = trl_jsd_loss(student, teacher, labels=labels, beta=beta, reduction="batchmean")
    torch.testing.assert_close(ours_mean, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_matches_trl_num_items_in_batch(
    beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, trl_jsd_loss
) -> None:
    student, teacher = logits_pair
    mask = labels != -100
    num_items = 37  # a global token count, as under gradient accumulation; not the local one
    ours = generalized_jsd(student, teacher, beta)[mask].sum() / num_items
    theirs = trl_jsd_loss(student, teacher, labels=labels, beta=beta, num_items_in_batch=num_items)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    theirs_tensor = trl_jsd_loss(
        student, teacher, labels=labels, beta=beta, num_items_in_batch=torch.tensor(num_items)
    )
    torch.testing.assert_close(ours, theirs_tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_matches_trl_per_position(
    beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor], trl_jsd_loss
) -> None:
    """TRL's reduction='none' keeps the vocabulary axis; summing it gives our per-position values."""
    student, teacher = logits_pair
    theirs = trl_jsd_loss(student, teacher, beta=beta, reduction="none").sum(-1)
    torch.testing.assert_close(generalized_jsd(student, teacher, beta), theirs, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# 3. Direction: teacher and student are not interchangeable
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peaked_teacher_flat_student() -> tuple[torch.Tensor, torch.Tensor]:
    vocab = 20
    teacher = torch.zeros(2, vocab)
    teacher[0, 3] = 8.0
    teacher[1, 11] = 6.0
    teacher[1, 12] = 5.0
    student = 0.05 * torch.randn(2, vocab, generator=torch.Generator().manual_seed(7))
    return student, teacher


def test_beta0_is_forward_kl(peaked_teacher_flat_student: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = peaked_teacher_flat_student
    p_s = ref_softmax(student.double().numpy())
    p_t = ref_softmax(teacher.double().numpy())
    forward, reverse = ref_kl(p_t, p_s), ref_kl(p_s, p_t)
    assert np.all(np.abs(forward - reverse) > 0.5)  # the two directions really differ on these inputs

    out = generalized_jsd(student, teacher, 0.0).double().numpy()
    np.testing.assert_allclose(out, forward, rtol=1e-5)
    assert np.all(np.abs(out - reverse) > 0.5)


def test_beta1_is_reverse_kl(peaked_teacher_flat_student: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = peaked_teacher_flat_student
    p_s = ref_softmax(student.double().numpy())
    p_t = ref_softmax(teacher.double().numpy())
    forward, reverse = ref_kl(p_t, p_s), ref_kl(p_s, p_t)

    out = generalized_jsd(student, teacher, 1.0).double().numpy()
    np.testing.assert_allclose(out, reverse, rtol=1e-5)
    assert np.all(np.abs(out - forward) > 0.5)


@pytest.mark.parametrize("beta", [0.1, 0.9])
def test_mixture_weights_teacher_by_beta(
    beta: float, peaked_teacher_flat_student: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """M = beta * P_T + (1 - beta) * P_S, not the swapped (1 - beta) * P_T + beta * P_S."""
    student, teacher = peaked_teacher_flat_student
    p_s = ref_softmax(student.double().numpy())
    p_t = ref_softmax(teacher.double().numpy())
    correct = ref_jsd_with_mixture(p_t, p_s, beta, mix=beta)
    swapped = ref_jsd_with_mixture(p_t, p_s, beta, mix=1.0 - beta)
    assert np.all(np.abs(correct - swapped) > 0.2 * correct)

    out = generalized_jsd(student, teacher, beta).double().numpy()
    np.testing.assert_allclose(out, correct, rtol=1e-5)
    assert np.all(np.abs(out - swapped) > 0.2 * correct)


@pytest.mark.parametrize("beta", BETAS)
def test_argument_order_matters(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """JSD_beta(S, T) = JSD_{1-beta}(T, S): swapping the arguments is the same as flipping beta."""
    student, teacher = logits_pair
    torch.testing.assert_close(
        generalized_jsd(student, teacher, beta),
        generalized_jsd(teacher, student, 1.0 - beta),
        rtol=1e-5,
        atol=1e-6,
    )
    if beta != 0.5:
        assert not torch.allclose(
            generalized_jsd(student, teacher, beta), generalized_jsd(teacher, student, beta), rtol=1e-3
        )


# --------------------------------------------------------------------------------------------------------
# 4. Boundaries and sign
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_limits_are_not_zero(
    beta: float,
    logits_pair: tuple[torch.Tensor, torch.Tensor],
    peaked_teacher_flat_student: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """The mixture formula evaluated at beta = 0 or 1 is identically 0; the limits must be the plain KLs."""
    student, teacher = logits_pair
    out = generalized_jsd(student, teacher, beta)
    # One position has both distributions peaked on the same token, so its divergence is small but not 0.
    assert out.min() > 1e-3
    assert out.mean() > 1.0

    flat_student, peaked_teacher = peaked_teacher_flat_student
    assert torch.all(generalized_jsd(flat_student, peaked_teacher, beta) > 0.5)


@pytest.mark.parametrize("beta", BETAS)
def test_identical_logits_give_zero(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits = logits_pair[0]
    out = generalized_jsd(logits, logits.clone(), beta)
    assert out.abs().max() <= 1e-6


@pytest.mark.parametrize("beta", BETAS)
def test_shift_invariance(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Adding a per-position constant to the logits changes neither the distributions nor the divergence."""
    student, teacher = logits_pair
    shift = torch.linspace(-20.0, 20.0, SHAPE[0] * SHAPE[1]).view(*SHAPE[:2], 1)
    torch.testing.assert_close(
        generalized_jsd(student + shift, teacher - shift, beta),
        generalized_jsd(student, teacher, beta),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_non_negative(beta: float, seed: int) -> None:
    student = random_logits(seed=10 + seed)
    # Near-identical teacher, where rounding could push a divergence below zero.
    teacher = student + 1e-3 * random_logits(seed=20 + seed)
    for t in (teacher, random_logits(seed=30 + seed)):
        out = generalized_jsd(student, t, beta)
        assert torch.isfinite(out).all()
        assert out.min() >= -1e-7


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_bounded_by_log_of_mixture_weights(
    beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """For 0 < beta < 1, KL(P_T||M) <= -log(beta) and KL(P_S||M) <= -log(1-beta): JSD_beta is bounded."""
    student, teacher = logits_pair
    bound = -beta * np.log(beta) - (1.0 - beta) * np.log1p(-beta)
    assert generalized_jsd(student, teacher, beta).max() <= bound + 1e-6


# --------------------------------------------------------------------------------------------------------
# 5. Gradient
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gradcheck_float64(beta: float) -> None:
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: generalized_jsd(s, teacher, beta), (student,))


@pytest.mark.parametrize("beta", BETAS)
def test_gradient_is_finite(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits_pair
    student = student.clone().requires_grad_(True)
    generalized_jsd(student, teacher, beta).sum().backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_gradient_of_forward_kl_closed_form(logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """d KL(P_T || P_S) / d student_logits = P_S - P_T."""
    student, teacher = (x.double() for x in logits_pair)
    student = student.clone().requires_grad_(True)
    generalized_jsd(student, teacher, 0.0).sum().backward()
    expected = ref_softmax(student.detach().numpy()) - ref_softmax(teacher.numpy())
    np.testing.assert_allclose(student.grad.numpy(), expected, rtol=1e-8, atol=1e-12)


def test_gradient_of_reverse_kl_closed_form(logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """d KL(P_S || P_T) / d s_v = p_v * (log p_v - log t_v - KL(P_S || P_T))."""
    student, teacher = (x.double() for x in logits_pair)
    student = student.clone().requires_grad_(True)
    generalized_jsd(student, teacher, 1.0).sum().backward()
    p_s = ref_softmax(student.detach().numpy())
    p_t = ref_softmax(teacher.numpy())
    kl = ref_kl(p_s, p_t)[..., None]
    expected = p_s * (np.log(p_s) - np.log(p_t) - kl)
    np.testing.assert_allclose(student.grad.numpy(), expected, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# 6. dtype
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", BETAS)
def test_bf16_inputs_are_upcast(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits_pair
    student_bf16, teacher_bf16 = student.to(torch.bfloat16), teacher.to(torch.bfloat16)
    out = generalized_jsd(student_bf16, teacher_bf16, beta)
    assert out.dtype == torch.float32

    # Same values as computing in float32 on the bf16-rounded logits ...
    in_fp32 = generalized_jsd(student_bf16.float(), teacher_bf16.float(), beta)
    torch.testing.assert_close(out, in_fp32, rtol=1e-6, atol=1e-7)
    # ... which is as accurate as float32 allows (a bf16 computation would be off by ~1e-2 relative) ...
    np.testing.assert_allclose(
        out.double().numpy(), ref_generalized_jsd(student_bf16, teacher_bf16, beta), rtol=1e-5, atol=1e-6
    )
    # ... and close to the float32 result on the unrounded logits, up to bf16's rounding of the inputs.
    torch.testing.assert_close(out, generalized_jsd(student, teacher, beta), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_mixed_bf16_and_float32_inputs(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits_pair
    for s, t in ((student.to(torch.bfloat16), teacher), (student, teacher.to(torch.bfloat16))):
        out = generalized_jsd(s, t, beta)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, generalized_jsd(s.float(), t.float(), beta), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------------
# 7. Invalid beta
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [-0.1, 1.5, -1e-9, 1.0 + 1e-9, float("nan")])
def test_invalid_beta_raises(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits_pair
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, beta)


# --------------------------------------------------------------------------------------------------------
# -inf logits (e.g. a vocabulary padded with -inf to align teacher and student) contribute nothing
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_minus_inf_padding_is_ignored(beta: float, logits_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    student, teacher = logits_pair
    pad = torch.full((*SHAPE[:-1], 4), float("-inf"))
    out = generalized_jsd(torch.cat([student, pad], -1), torch.cat([teacher, pad], -1), beta)
    torch.testing.assert_close(out, generalized_jsd(student, teacher, beta))


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_gradient_matches_autograd_of_the_definition(beta: float) -> None:
    """The closed-form backward equals autograd through the textbook formula, across chunk borders."""
    import selftaught.training.losses as losses

    generator = torch.Generator().manual_seed(7)
    student = (3 * torch.randn(300, 40, generator=generator, dtype=torch.float64)).requires_grad_()
    teacher = 3 * torch.randn(300, 40, generator=generator, dtype=torch.float64)
    weights = torch.rand(300, generator=generator, dtype=torch.float64)
    (generalized_jsd(student, teacher, beta) * weights).sum().backward()
    fused = student.grad.clone()
    student.grad = None
    reference = losses.jsd_rows(F.log_softmax(student, -1), F.log_softmax(teacher, -1), beta)
    (reference * weights).sum().backward()
    torch.testing.assert_close(fused, student.grad)
