"""Edge cases of the losses (issue #11): every input gets cross-entropy's answer or a clear error.

References are independent of the code under test: ``F.cross_entropy`` (the k = 1 member), the
brute force over all k-subsets of tests/reference.py, and hand-computed limits. The smooth loss
runs on every backend (``every_backend``), in float64 where the backend computes it and otherwise
(Triton) in float32 with the float32 bounds of docs/exactness.md.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from backend_suite import precise_dtype
from exactness_grid import BOUNDS
from reference import brute_force_loss
from smoothtopk import smooth_topk_svm_loss, topk_svm_loss

INF, NAN = math.inf, math.nan
RULED_OUT = -1.0e4  # stands for -inf in the brute force: e^(-1e4 / (k tau)) is 0 to 1e-400


def _limit(scores, target, k, tau, alpha):
    """The brute-force value with -inf scores replaced by a very negative finite score."""
    finite = [RULED_OUT if s == -INF else s for s in scores]
    return brute_force_loss(finite, target, k, tau, alpha)


# (scores, target, k, tau, alpha): classes masked with -inf, fewer or more than k finite.
MASKED = [
    ([0.0, 1.0, -INF, -INF], 0, 3, 1.0, 1.0),  # one finite non-target class, k = 3: limit 0
    ([0.0, -INF, -INF], 0, 1, 1.0, 0.0),  # cross-entropy: 0
    ([0.0, -INF, -INF, -INF, 2.0], 4, 2, 0.5, 1.0),  # one finite non-target, k = 2
    ([0.0, 1.0, 2.0, -INF, -INF], 1, 2, 1.0, 1.0),  # enough finite classes: -inf rules out
    ([3.0, -INF, 1.0, -INF, 0.5, -2.0], 2, 3, 0.1, 0.5),
]


@pytest.mark.parametrize("scores, target, k, tau, alpha", MASKED)
def test_classes_masked_with_minus_inf_give_the_limit(scores, target, k, tau, alpha, every_backend):
    dtype = precise_dtype(every_backend)  # the scores are exact in float32 too
    x = torch.tensor([scores], dtype=dtype, requires_grad=True)
    value = smooth_topk_svm_loss(x, torch.tensor([target]), k=k, tau=tau, alpha=alpha)
    value.backward()
    expected = _limit(scores, target, k, tau, alpha)
    # float64: absolute; float32 (Triton): the bounds of docs/exactness.md, normalised as there
    loss_tolerance, grad_tolerance = 1e-12, 1e-6  # the latter: the finite difference's own
    loss_bound, grad_bound = BOUNDS[dtype]
    if dtype == torch.float32:
        gap = max(s for s in scores if s != -INF) - scores[target]
        loss_tolerance = loss_bound * (tau + alpha + abs(gap) / k)
    assert value.item() == pytest.approx(expected, abs=loss_tolerance, rel=1e-12)
    assert torch.isfinite(x.grad).all()
    masked = torch.tensor(scores) == -INF
    # 0 up to the exp floor of the kernels (terms below the normal range count as its minimum)
    assert (x.grad[0][masked].abs() <= torch.finfo(x.dtype).tiny).all()
    # the gradient of the finite classes against a finite difference of the brute force
    differences = []
    for j in (~masked).nonzero().flatten().tolist():
        step = [0.0] * len(scores)
        step[j] = 1e-6
        up = _limit([s + d for s, d in zip(scores, step, strict=True)], target, k, tau, alpha)
        down = _limit([s - d for s, d in zip(scores, step, strict=True)], target, k, tau, alpha)
        differences.append((x.grad[0, j].item(), (up - down) / 2e-6))
    if dtype == torch.float32:
        largest = max(abs(expected) for _, expected in differences)
        grad_tolerance = max(grad_tolerance, grad_bound * largest)
    for ours, expected in differences:
        assert ours == pytest.approx(expected, abs=grad_tolerance)


def test_masked_classes_match_cross_entropy(every_backend):
    x = torch.tensor([[0.0, -INF, -INF], [1.0, -INF, 0.5], [-INF, 2.0, -INF]], requires_grad=True)
    y = torch.tensor([0, 2, 1])
    ours = smooth_topk_svm_loss(x, y, k=1, tau=1.0, alpha=0.0, reduction="none")
    ce_input = x.detach().clone().requires_grad_(True)
    ce = F.cross_entropy(ce_input, y, reduction="none")
    torch.testing.assert_close(ours, ce)
    ours.sum().backward()
    ce.sum().backward()
    torch.testing.assert_close(x.grad, ce_input.grad)


POISONED_ROWS = [
    [0.0, 1.0, -INF, -INF],  # fewer than k finite classes
    [NAN, 0.0, 1.0, 2.0],
    [INF, 0.0, 1.0, 2.0],
    [-INF, -INF, -INF, -INF],
]


@pytest.mark.parametrize("row", POISONED_ROWS)
@pytest.mark.parametrize("loss", ["smooth", "hard"])
def test_an_ignored_row_contributes_nothing(row, loss, every_backend):
    good = [[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 0.2]]
    call = {
        "smooth": lambda x, y, **kw: smooth_topk_svm_loss(x, y, k=3, tau=0.5, **kw),
        "hard": lambda x, y, **kw: topk_svm_loss(x, y, k=2, **kw),
    }[loss]
    dtype = precise_dtype(every_backend)
    x = torch.tensor([good[0], row, good[1]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, -100, 2])
    clean = torch.tensor(good, dtype=dtype, requires_grad=True)
    for reduction in ("mean", "sum", "none"):
        x.grad = clean.grad = None
        value = call(x, y, reduction=reduction)
        expected = call(clean, y[[0, 2]], reduction=reduction)
        if reduction == "none":
            assert value[1] == 0
            value = value[[0, 2]]
        torch.testing.assert_close(value, expected)
        value.sum().backward()
        expected.sum().backward()
        assert (x.grad[1] == 0).all()
        torch.testing.assert_close(x.grad[[0, 2]], clean.grad)


@pytest.mark.parametrize("class_zero_weight", [NAN, INF])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weight_of_class_zero_does_not_reach_ignored_rows(
    class_zero_weight, reduction, every_backend
):
    x = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    y = torch.tensor([-100, 1])
    weight = torch.tensor([class_zero_weight, 1.0, 1.0])
    ours = smooth_topk_svm_loss(x, y, k=1, tau=1.0, alpha=0.0, weight=weight, reduction=reduction)
    ce = F.cross_entropy(x, y, weight=weight, reduction=reduction)
    torch.testing.assert_close(ours, ce)
    assert torch.isfinite(ours).all()
    hard = topk_svm_loss(x, y, k=1, alpha=1.0, weight=weight, reduction=reduction)
    assert torch.isfinite(hard).all()
    ours.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[0] == 0).all()


@pytest.mark.parametrize(
    "scores, target, k",
    [([[NAN, 0.0, 1.0, 2.0]], 1, 2), ([[0.0, INF, 1.0]], 1, 1), ([[INF, 0.0, 1.0]], 1, 1)],
)
def test_hard_loss_is_nan_for_nan_and_plus_inf_like_cross_entropy(scores, target, k):
    x = torch.tensor(scores)
    y = torch.tensor([target])
    assert torch.isnan(topk_svm_loss(x, y, k=k))
    assert torch.isnan(smooth_topk_svm_loss(x, y, k=k))
    assert torch.isnan(F.cross_entropy(x, y))


# alpha / tau beyond the double range, with a loss (about alpha) that the dtype represents
EXTREME = {torch.float64: (1e-30, 1e300, 1e-12), torch.float32: (1e-300, 1e30, 1e-6)}


def test_extreme_tau_and_alpha_give_the_finite_value(every_backend):
    # tau -> 0: the loss is the hard hinge alpha + (s_[k] - s_y) / k up to tau log C(n - 1, k)
    dtype = precise_dtype(every_backend)
    tau, alpha, rel = EXTREME[dtype]
    x = torch.tensor([[0.5, 0.3]], dtype=dtype, requires_grad=True)
    value = smooth_topk_svm_loss(x, torch.tensor([1]), k=1, tau=tau, alpha=alpha)
    assert value.item() == pytest.approx(alpha, rel=rel)
    value.backward()
    torch.testing.assert_close(x.grad, torch.tensor([[1.0, -1.0]], dtype=dtype))

    x = torch.tensor([[1077.4, 1e30, -645.2]], requires_grad=True)
    value = smooth_topk_svm_loss(x, torch.tensor([2]), k=2, tau=1e-30, alpha=0.5)
    first, _, target = x.detach()[0].tolist()  # the 2nd largest other score is the first
    hinge = 0.5 + (first - target) / 2
    assert value.item() == pytest.approx(hinge, rel=1e-6)
    value.backward()
    assert torch.isfinite(x.grad).all()


def test_temperature_whose_scale_overflows_is_rejected():
    with pytest.raises(ValueError, match="tau"):
        smooth_topk_svm_loss(torch.zeros(2, 4), torch.tensor([0, 1]), k=2, tau=1e-310)
