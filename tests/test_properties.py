"""Mathematical properties of the loss family (hypothesis + gradcheck), on every backend.

Each backend computes in its precise dtype (``backend_suite.precise_dtype``: float64, or
float32 on Triton), and a loss value is judged by the loss bound of that dtype
(``exactness_grid.BOUNDS``) relative to ``tau + alpha + |max s - s_y| / k``, the normalisation
of docs/exactness.md. A backend run in Triton's interpreter gets a few examples of each
property (``backend_suite.few``).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backend_suite import few, only_some_when_interpreted, precise_dtype, require
from exactness_grid import BOUNDS
from reference import brute_force_loss, hard_loss
from smoothtopk import smooth_topk_svm_loss, topk_svm_loss

EXAMPLES, FEW_EXAMPLES = 40, 5


def for_every_backend(*strategies):
    """``given(*strategies)``, run once per backend (the ``every_backend`` fixture, whose name
    the test takes first): ``EXAMPLES`` examples, ``FEW_EXAMPLES`` under Triton's interpreter."""

    def decorate(body):
        runs = {
            examples: settings(max_examples=examples, deadline=None)(given(*strategies)(body))
            for examples in (EXAMPLES, FEW_EXAMPLES)
        }

        def test(every_backend):
            runs[FEW_EXAMPLES if few(every_backend) else EXAMPLES](every_backend)

        test.__name__, test.__qualname__, test.__doc__ = (
            body.__name__,
            body.__qualname__,
            body.__doc__,
        )
        return test

    return decorate


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


def in_precise_dtype(backend, problem):
    """The problem with its scores rounded to the backend's precise dtype."""
    scores, *rest = problem
    return scores.to(precise_dtype(backend)), *rest


def loss(scores, target, k, tau, alpha, **kwargs):
    return smooth_topk_svm_loss(
        scores, target, k=k, tau=tau, alpha=alpha, reduction="none", **kwargs
    )


def bound(scores, target, k, tau, alpha):
    """Per row: the loss bound of the scores' dtype times ``tau + alpha + |max s - s_y| / k``."""
    gap = (scores.max(dim=1).values - scores.gather(1, target[:, None])[:, 0]).double().abs()
    return BOUNDS[scores.dtype][0] * (tau + alpha + gap / k)


def assert_within(values, expected, allowed):
    """``|values - expected| <= allowed`` row by row."""
    error = (values.double() - expected.double()).abs()
    assert (error <= allowed).all(), (values, expected, error, allowed)


@for_every_backend(problems())
def test_matches_brute_force(backend, problem):
    problem = in_precise_dtype(backend, problem)
    scores, target, k, tau, alpha = problem
    expected = [
        brute_force_loss(s, int(t), k, tau, alpha) for s, t in zip(scores, target, strict=True)
    ]
    expected = torch.tensor(expected, dtype=torch.float64)
    assert_within(loss(*problem), expected, bound(*problem))


@for_every_backend(problems(), st.floats(-1e3, 1e3))
def test_shift_invariance_per_sample(backend, problem, shift):
    rounded = in_precise_dtype(backend, problem)
    scores, target, k, tau, alpha = rounded
    shifts = shift * torch.arange(1, scores.shape[0] + 1, dtype=torch.float64)[:, None]
    shifted = (problem[0] + shifts).to(scores.dtype)
    # |dL/ds|_1 <= 2/k: the loss moves by at most 2 max_j |ds_j| when the scores move by ds,
    # which bounds what rounding the shifted scores (exact in float64 to ~1e-13) can change.
    moved = ((shifted.double() - shifts) - scores.double()).abs().amax(dim=1)
    allowed = 2 * bound(*rounded) + 2 * moved
    assert_within(loss(shifted, target, k, tau, alpha), loss(*rounded), allowed)


@for_every_backend(problems(), st.randoms(use_true_random=False))
def test_class_permutation_invariance(backend, problem, random):
    problem = in_precise_dtype(backend, problem)
    scores, target, k, tau, alpha = problem
    permutation = list(range(scores.shape[1]))
    random.shuffle(permutation)
    permutation = torch.tensor(permutation)
    inverse = torch.argsort(permutation)
    permuted = loss(scores[:, permutation], inverse[target], k, tau, alpha)
    assert_within(permuted, loss(*problem), 2 * bound(*problem))


@for_every_backend(problems())
def test_non_negative_and_per_sample_independent(backend, problem):
    problem = in_precise_dtype(backend, problem)
    scores, target, k, tau, alpha = problem
    values = loss(*problem)
    allowed = 2 * bound(*problem)
    assert (values >= 0).all()
    for i in range(scores.shape[0]):
        alone = loss(scores[i : i + 1], target[i : i + 1], k, tau, alpha)
        assert_within(values[i : i + 1], alone, allowed[i : i + 1])


@for_every_backend(problems())
def test_tends_to_hard_loss_as_tau_goes_to_zero(backend, problem):
    scores, target, k, _, alpha = in_precise_dtype(backend, problem)
    hard = topk_svm_loss(scores, target, k=k, alpha=alpha, reduction="none")
    expected = [hard_loss(s, int(t), k, alpha) for s, t in zip(scores, target, strict=True)]
    expected = torch.tensor(expected, dtype=torch.float64)
    assert_within(hard, expected, bound(scores, target, k, 0.0, alpha))
    for tau in (1e-1, 1e-2, 1e-3, 1e-4):
        gap = (loss(scores, target, k, tau, alpha) - hard).abs()
        # |L_{k,tau} - l_k| <= tau * log C(n, k) <= tau * log n!: it vanishes linearly in tau
        limit = tau * math.lgamma(scores.shape[1] + 1) * (1 + 1e-9) + 1e-12
        assert (gap <= limit + 2 * bound(scores, target, k, tau, alpha)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 2, 2), (5,)])
def test_k1_alpha0_tau1_is_cross_entropy(dtype, reduction, use_weight, shape, every_backend):
    require(every_backend, dtype)
    only_some_when_interpreted(
        every_backend, "k = 1 as cross-entropy: test_backend_contract's and test_edge_cases'"
    )
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
def test_gradcheck_and_gradgradcheck(k, tau, alpha, every_backend):
    require(every_backend, torch.float64)  # finite differences need float64
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(3, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 6])

    def f(scores):
        return smooth_topk_svm_loss(scores, target, k=k, tau=tau, alpha=alpha, reduction="none")

    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


def test_gradient_penalty_uses_double_backward(every_backend):
    x = torch.randn(4, 10, dtype=precise_dtype(every_backend), requires_grad=True)
    target = torch.tensor([1, 2, 3, 4])
    value = smooth_topk_svm_loss(x, target, k=3)
    (grad,) = torch.autograd.grad(value, x, create_graph=True)
    penalty = grad.pow(2).sum()
    penalty.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dense_gradient_versus_hard_loss(every_backend):
    x = torch.randn(2, 10, dtype=precise_dtype(every_backend), requires_grad=True)
    target = torch.tensor([0, 1])
    (smooth,) = torch.autograd.grad(smooth_topk_svm_loss(x, target, k=3, tau=1.0), x)
    (hard,) = torch.autograd.grad(topk_svm_loss(x, target, k=3, alpha=5.0), x)
    assert (smooth != 0).all()
    assert ((hard != 0).sum(dim=1) <= 2).all()
