"""Mathematical properties of the loss family (hypothesis + gradcheck), in float64."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference import brute_force_loss, hard_loss
from smoothtopk import smooth_topk_svm_loss, topk_svm_loss

# The backend fixture (tests/conftest.py) sets an environment variable for the whole test, which
# is what every example needs: its function scope is intended.
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
pytestmark = pytest.mark.usefixtures("backend")  # the fused CPU kernel and the PyTorch code


@st.composite
def problems(draw, max_n=8):
    n = draw(st.integers(2, max_n))
    k = draw(st.integers(1, n - 1))
    rows = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, n, generator=generator, dtype=torch.float64) * scale
    if draw(st.booleans()):  # ties
        scores = torch.round(scores)
    target = torch.randint(0, n, (rows,), generator=generator)
    tau = draw(st.sampled_from([1e-2, 0.3, 1.0, 5.0]))
    alpha = draw(st.sampled_from([0.0, 0.5, 1.0]))
    return scores, target, k, tau, alpha


def loss(scores, target, k, tau, alpha, **kwargs):
    return smooth_topk_svm_loss(
        scores, target, k=k, tau=tau, alpha=alpha, reduction="none", **kwargs
    )


@SETTINGS
@given(problems())
def test_matches_brute_force(problem):
    scores, target, k, tau, alpha = problem
    expected = [
        brute_force_loss(s, int(t), k, tau, alpha) for s, t in zip(scores, target, strict=True)
    ]
    torch.testing.assert_close(loss(*problem), torch.tensor(expected, dtype=torch.float64))


@SETTINGS
@given(problems(), st.floats(-1e3, 1e3))
def test_shift_invariance_per_sample(problem, shift):
    scores, target, k, tau, alpha = problem
    shifts = shift * torch.arange(1, scores.shape[0] + 1, dtype=torch.float64)[:, None]
    torch.testing.assert_close(
        loss(scores + shifts, target, k, tau, alpha), loss(*problem), rtol=1e-9, atol=1e-9
    )


@SETTINGS
@given(problems(), st.randoms(use_true_random=False))
def test_class_permutation_invariance(problem, random):
    scores, target, k, tau, alpha = problem
    permutation = list(range(scores.shape[1]))
    random.shuffle(permutation)
    permutation = torch.tensor(permutation)
    inverse = torch.argsort(permutation)
    torch.testing.assert_close(
        loss(scores[:, permutation], inverse[target], k, tau, alpha), loss(*problem)
    )


@SETTINGS
@given(problems())
def test_non_negative_and_per_sample_independent(problem):
    scores, target, k, tau, alpha = problem
    values = loss(*problem)
    assert (values >= 0).all()
    for i in range(scores.shape[0]):
        torch.testing.assert_close(
            values[i : i + 1], loss(scores[i : i + 1], target[i : i + 1], k, tau, alpha)
        )


@SETTINGS
@given(problems())
def test_tends_to_hard_loss_as_tau_goes_to_zero(problem):
    scores, target, k, _, alpha = problem
    hard = topk_svm_loss(scores, target, k=k, alpha=alpha, reduction="none")
    expected = [hard_loss(s, int(t), k, alpha) for s, t in zip(scores, target, strict=True)]
    torch.testing.assert_close(hard, torch.tensor(expected, dtype=torch.float64))
    for tau in (1e-1, 1e-2, 1e-3, 1e-4):
        gap = (loss(scores, target, k, tau, alpha) - hard).abs().max()
        # |L_{k,tau} - l_k| <= tau * log C(n, k) <= tau * log n!: it vanishes linearly in tau
        assert gap <= tau * math.lgamma(scores.shape[1] + 1) * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 2, 2), (5,)])
def test_k1_alpha0_tau1_is_cross_entropy(dtype, reduction, use_weight, shape):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=generator, dtype=dtype) * 3).requires_grad_(True)
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    classes = shape[0] if len(shape) == 1 else shape[1]
    target = torch.randint(0, classes, target_shape, generator=generator)
    if len(shape) > 1:
        target.view(-1)[0] = -100
    weight = torch.rand(classes, generator=generator, dtype=dtype) + 0.1 if use_weight else None
    ours = smooth_topk_svm_loss(
        x, target, k=1, tau=1.0, alpha=0.0, weight=weight, reduction=reduction
    )
    ce = F.cross_entropy(x, target, weight=weight, reduction=reduction)
    torch.testing.assert_close(ours, ce)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_ce,) = torch.autograd.grad(ce.sum(), x)
    torch.testing.assert_close(g_ours, g_ce)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("tau, alpha", [(1.0, 1.0), (0.1, 0.0), (3.0, 0.5)])
def test_gradcheck_and_gradgradcheck(k, tau, alpha):
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(3, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 6])

    def f(scores):
        return smooth_topk_svm_loss(scores, target, k=k, tau=tau, alpha=alpha, reduction="none")

    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


def test_gradient_penalty_uses_double_backward():
    x = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 2, 3, 4])
    value = smooth_topk_svm_loss(x, target, k=3)
    (grad,) = torch.autograd.grad(value, x, create_graph=True)
    penalty = grad.pow(2).sum()
    penalty.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dense_gradient_versus_hard_loss():
    x = torch.randn(2, 10, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1])
    (smooth,) = torch.autograd.grad(smooth_topk_svm_loss(x, target, k=3, tau=1.0), x)
    (hard,) = torch.autograd.grad(topk_svm_loss(x, target, k=3, alpha=5.0), x)
    assert (smooth != 0).all()
    assert ((hard != 0).sum(dim=1) <= 2).all()
