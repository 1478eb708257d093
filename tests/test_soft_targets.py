"""Probability targets and label smoothing (issue #24): the expected loss ``sum_c q_c L(s, c)``.

References, none of them the code under test: the definition over all k-subsets in extended
precision (:func:`reference.brute_force_loss`), the class-index loss summed class by class
(itself tested against the references in test_exactness.py), ``F.cross_entropy`` for the
``k = 1, alpha = 0, tau = 1`` member.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from backend_suite import force
from reference import brute_force_loss
from smoothtopk import SmoothTopkSVMLoss, TopkSVMLoss, smooth_topk_svm_loss, topk_svm_loss
from smoothtopk.backends import every_class

INF = math.inf
#: the implementations of the expected loss: the fused CPU kernel and PyTorch operations (the
#: Triton kernel takes class indices only: test_triton_refuses_probability_targets)
DENSE_BACKENDS = ["cpu", "pytorch"]


@pytest.fixture(params=DENSE_BACKENDS)
def dense_backend(request, monkeypatch):
    return force(request.param, monkeypatch)


def _expected_by_class(loss, scores, q, **options):
    """``sum_c q_c loss(scores, c)`` per row, one class-index call per class."""
    rows, classes = scores.shape
    per_class = [
        loss(scores, torch.full((rows,), c), reduction="none", **options) for c in range(classes)
    ]
    return (torch.stack(per_class, dim=1) * q).sum(dim=1)


@pytest.mark.parametrize("k,classes", [(1, 4), (2, 5), (3, 7), (4, 8)])
@pytest.mark.parametrize("tau", [0.05, 1.0, 20.0])
def test_every_class_equals_the_definition(k, classes, tau):
    torch.manual_seed(k * 10 + classes)
    scores = torch.randn(3, classes, dtype=torch.float64) * 3
    scores[0] = 0.5  # all tied
    out = every_class.smooth_losses(scores, k, tau, 0.7)
    for i in range(3):
        for c in range(classes):
            expected = brute_force_loss(scores[i].tolist(), c, k, tau, 0.7)
            assert out[i, c].item() == pytest.approx(expected, rel=1e-12, abs=1e-13)


def _edge_rows(classes: int, k: int) -> torch.Tensor:
    """Rows with ``-inf`` scores: one ruled out, exactly k + 1, k and k - 1 finite."""
    scores = torch.randn(5, classes, dtype=torch.float64) * 2
    scores[1, 1] = -INF
    for row, finite in ((2, k + 1), (3, k), (4, k - 1)):
        scores[row, : classes - finite] = -INF
    return scores


@pytest.mark.parametrize("k", [1, 2, 5, 9])
@pytest.mark.parametrize("classes", [12, 40])
def test_every_class_equals_the_class_index_loss(k, classes):
    """Class by class, edge rows included (``-inf`` classes, too few finite scores, NaN)."""
    torch.manual_seed(k + classes)
    scores = _edge_rows(classes, k)
    alpha = torch.rand(classes, dtype=torch.float64)
    by_class = [
        smooth_topk_svm_loss(
            scores, torch.full((5,), c), k=k, tau=0.5, alpha=alpha, reduction="none"
        )
        for c in range(classes)
    ]
    out = every_class.smooth_losses(scores, k, 0.5, alpha)
    torch.testing.assert_close(out, torch.stack(by_class, 1), rtol=1e-12, atol=1e-13,
                               equal_nan=True)  # fmt: skip
    poisoned = scores.clone()
    poisoned[0, 3] = math.nan
    assert every_class.smooth_losses(poisoned, k, 0.5, 1.0)[0].isnan().all()


CASES = [(1, 10, 1.0, 3.0), (5, 30, 1.0, 3.0), (5, 100, 0.1, 10.0), (10, 50, 1.0, 1.0),
         (20, 60, 0.05, 5.0), (20, 60, 1.0, 0.01)]  # fmt: skip


@pytest.mark.parametrize("k,classes,tau,spread", CASES)
def test_expected_loss_and_gradient_equal_the_sum_over_classes(
    k, classes, tau, spread, dense_backend
):
    torch.manual_seed(k * classes)
    scores = (torch.randn(4, classes, dtype=torch.float64) * spread).requires_grad_()
    q = torch.rand(4, classes, dtype=torch.float64).softmax(dim=1)
    options = dict(k=k, tau=tau, alpha=1.0)
    reference = _expected_by_class(smooth_topk_svm_loss, scores, q, **options)
    out = smooth_topk_svm_loss(scores, q, reduction="none", **options)
    torch.testing.assert_close(out, reference, rtol=1e-13, atol=1e-14)
    (grad,) = torch.autograd.grad(out.sum(), scores)
    (expected,) = torch.autograd.grad(reference.sum(), scores)
    torch.testing.assert_close(grad, expected, rtol=1e-11, atol=1e-12)


def test_float32_is_as_exact_as_its_rounding(dense_backend):
    torch.manual_seed(0)
    scores = torch.randn(64, 100) * 4
    q = torch.rand(64, 100).softmax(dim=1)
    out = smooth_topk_svm_loss(scores, q, k=5, tau=0.3, reduction="none")
    reference = smooth_topk_svm_loss(scores.double(), q.double(), k=5, tau=0.3, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference, rtol=4e-7, atol=0.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["indices", "probabilities"])
def test_cross_entropy_member(reduction, label_smoothing, weighted, kind, dense_backend):
    """k = 1, alpha = 0, tau = 1 is F.cross_entropy with the same targets and options (its
    mean divides by N for probabilities, by the weight sum for indices), values and
    gradients, with spatial dimensions."""
    torch.manual_seed(1)
    scores = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    if kind == "indices":
        target = torch.randint(0, 6, (4, 3))
        target[1, 2] = -100
    else:
        target = torch.rand(4, 6, 3, dtype=torch.float64).softmax(dim=1)
    weight = torch.rand(6, dtype=torch.float64) + 0.1 if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    out = smooth_topk_svm_loss(scores, target, k=1, tau=1.0, alpha=0.0, **options)
    expected = F.cross_entropy(scores, target, **options)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    (grad,) = torch.autograd.grad(out.sum(), scores)
    (expected_grad,) = torch.autograd.grad(expected.sum(), scores)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-14)


def test_label_smoothing_is_the_mixture_of_the_class_index_losses(dense_backend):
    torch.manual_seed(2)
    scores = torch.randn(5, 9, dtype=torch.float64)
    target = torch.tensor([0, 3, -100, 8, 2])
    weight = torch.rand(9, dtype=torch.float64)
    eps = 0.2
    options = dict(k=3, tau=0.5, alpha=1.0)
    own = smooth_topk_svm_loss(scores, target, weight=weight, reduction="none", **options)
    valid = target != -100
    every = _expected_by_class(smooth_topk_svm_loss, scores, weight.expand(5, 9), **options)
    expected = torch.where(valid, (1 - eps) * own + eps / 9 * every, 0.0)
    out = smooth_topk_svm_loss(
        scores, target, weight=weight, reduction="none", label_smoothing=eps, **options
    )
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    mean = smooth_topk_svm_loss(scores, target, weight=weight, label_smoothing=eps, **options)
    torch.testing.assert_close(mean, expected.sum() / weight[target[valid]].sum())


def test_probabilities_with_weight_and_smoothing_are_the_smoothed_distribution(dense_backend):
    torch.manual_seed(3)
    scores = torch.randn(4, 7, dtype=torch.float64)
    q = torch.rand(4, 7, dtype=torch.float64).softmax(dim=1)
    weight = torch.rand(7, dtype=torch.float64)
    eps = 0.3
    smoothed = (1 - eps) * q + eps / 7
    expected = _expected_by_class(smooth_topk_svm_loss, scores, smoothed * weight, k=2)
    out = smooth_topk_svm_loss(scores, q, k=2, weight=weight, label_smoothing=eps)
    torch.testing.assert_close(out, expected.mean(), rtol=1e-12, atol=1e-14)


def test_two_hot_targets_mix_two_class_index_losses(dense_backend):
    """Mixup's targets: lambda and 1 - lambda on two classes."""
    torch.manual_seed(4)
    scores = torch.randn(6, 10, dtype=torch.float64)
    first, second = torch.randint(0, 10, (6,)), torch.randint(0, 10, (6,))
    lam = 0.7
    q = lam * F.one_hot(first, 10).double() + (1 - lam) * F.one_hot(second, 10).double()
    expected = lam * smooth_topk_svm_loss(scores, first, reduction="none") + (
        1 - lam
    ) * smooth_topk_svm_loss(scores, second, reduction="none")
    torch.testing.assert_close(smooth_topk_svm_loss(scores, q, reduction="none"), expected)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_hard_loss_takes_probabilities_and_smoothing(k):
    torch.manual_seed(k)
    scores = torch.randn(6, 8, dtype=torch.float64)
    scores[2, 3] = -INF
    scores.requires_grad_()
    q = torch.rand(6, 8, dtype=torch.float64).softmax(dim=1)
    expected = _expected_by_class(topk_svm_loss, scores, q, k=k, alpha=0.5)
    out = topk_svm_loss(scores, q, k=k, alpha=0.5, reduction="none")
    torch.testing.assert_close(out, expected)
    (grad,) = torch.autograd.grad(out.sum(), scores)
    (expected_grad,) = torch.autograd.grad(expected.sum(), scores)
    torch.testing.assert_close(grad, expected_grad)
    target = torch.randint(0, 8, (6,))
    smoothed = 0.9 * F.one_hot(target, 8).double() + 0.1 / 8
    torch.testing.assert_close(
        topk_svm_loss(scores, target, k=k, alpha=0.5, label_smoothing=0.1),
        topk_svm_loss(scores, smoothed, k=k, alpha=0.5),
    )


def test_gradcheck_and_double_backward(dense_backend):
    torch.manual_seed(5)
    scores = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    q = torch.rand(3, 6, dtype=torch.float64).softmax(dim=1)

    def loss(s):
        return smooth_topk_svm_loss(s, q, k=2, tau=0.7, label_smoothing=0.1)

    assert torch.autograd.gradcheck(loss, (scores,))
    assert torch.autograd.gradgradcheck(loss, (scores,))


def test_gradient_flows_to_probability_targets(dense_backend):
    """As F.cross_entropy: d loss / d q_c = l_c (e.g. a learned teacher's distribution)."""
    scores = torch.randn(2, 5, dtype=torch.float64)
    q = torch.rand(2, 5, dtype=torch.float64).softmax(dim=1).requires_grad_()
    smooth_topk_svm_loss(scores, q, k=2, reduction="sum").backward()
    torch.testing.assert_close(q.grad, every_class.smooth_losses(scores, 2, 1.0, 1.0))


def test_modules_take_label_smoothing_and_probabilities():
    torch.manual_seed(6)
    scores = torch.randn(4, 7)
    q = torch.rand(4, 7).softmax(dim=1)
    target = torch.randint(0, 7, (4,))
    smooth = SmoothTopkSVMLoss(k=2, tau=0.5, label_smoothing=0.1)
    assert "label_smoothing=0.1" in repr(smooth)
    assert "label_smoothing" not in repr(SmoothTopkSVMLoss(k=2))
    options = dict(k=2, tau=0.5, label_smoothing=0.1)
    for target_kind in (target, q):
        expected = smooth_topk_svm_loss(scores, target_kind, **options)
        torch.testing.assert_close(smooth(scores, target_kind), expected)
    hard = TopkSVMLoss(k=2, label_smoothing=0.2)
    expected = topk_svm_loss(scores, q, k=2, label_smoothing=0.2)
    torch.testing.assert_close(hard(scores, q), expected)


def test_compile_fullgraph_equals_eager(dense_backend):
    torch.manual_seed(7)
    scores = torch.randn(8, 12, requires_grad=True)
    q = torch.rand(8, 12).softmax(dim=1)

    def loss(s, q):
        return smooth_topk_svm_loss(s, q, k=3, tau=0.5, label_smoothing=0.1)

    eager = loss(scores, q)
    (eager_grad,) = torch.autograd.grad(eager, scores)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")(scores, q)
    (compiled_grad,) = torch.autograd.grad(compiled, scores)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


def test_autocast_computes_in_float32(dense_backend):
    torch.manual_seed(8)
    scores = torch.randn(4, 9)
    q = torch.rand(4, 9).softmax(dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = smooth_topk_svm_loss(scores.bfloat16(), q, k=2)
    assert out.dtype == torch.float32  # as autocast's cross_entropy
    torch.testing.assert_close(out, smooth_topk_svm_loss(scores.bfloat16().float(), q, k=2))


@pytest.mark.parametrize(
    "target,options,error,match",
    [
        (torch.rand(4, 6), {}, ValueError, r"input's shape \(4, 5\)"),
        (torch.rand(4), {}, ValueError, "class indices are an integer dtype"),
        (torch.zeros(4, dtype=torch.long), {"label_smoothing": 1.5}, ValueError,
         r"label_smoothing must be in \[0, 1\]"),
        (torch.zeros(4, dtype=torch.long), {"label_smoothing": -0.1}, ValueError,
         "label_smoothing"),
        (torch.zeros(4, dtype=torch.long), {"label_smoothing": True}, TypeError,
         "label_smoothing must be a float"),
        (torch.zeros(4, dtype=torch.long), {"label_smoothing": "0.1"}, TypeError,
         "label_smoothing"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("loss", [smooth_topk_svm_loss, topk_svm_loss])
def test_bad_targets_and_smoothing_are_named(loss, target, options, error, match):
    with pytest.raises(error, match=match):
        loss(torch.randn(4, 5), target, k=2, **options)


def test_losses_without_probabilities_say_so():
    from smoothtopk.comparators import truncated_topk_entropy_loss

    with pytest.raises(TypeError, match="integer class indices"):
        truncated_topk_entropy_loss(torch.randn(4, 5), torch.rand(4, 5), k=2)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_edge_rows_and_margins_equal_the_class_index_losses(dense_backend, k):
    """-inf classes, rows with k + 1, k and k - 1 finite scores, a NaN row, per-class
    margins: value and gradient as the class-index losses summed class by class."""
    torch.manual_seed(k)
    classes = 12
    scores = _edge_rows(classes, k)
    scores[0, 2] = math.nan
    q = torch.rand(5, classes, dtype=torch.float64).softmax(dim=1)
    alpha = torch.rand(classes, dtype=torch.float64)
    live = scores.clone()
    live[0, 2] = 0.0
    live.requires_grad_()
    out = smooth_topk_svm_loss(scores, q, k=k, tau=0.5, alpha=alpha, reduction="none")
    # the class-index loss in the same process: the pytorch backend unless forced otherwise
    reference = _expected_by_class(smooth_topk_svm_loss, scores, q, k=k, tau=0.5, alpha=alpha)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-13, equal_nan=True)
    assert out[0].isnan()
    rows = [1, 2]  # rows of finite loss (a -inf class of row 3 has k finite others: +inf)
    out = smooth_topk_svm_loss(live[rows], q[rows], k=k, tau=0.5, alpha=alpha, reduction="sum")
    reference = _expected_by_class(
        smooth_topk_svm_loss, live[rows], q[rows], k=k, tau=0.5, alpha=alpha
    ).sum()
    (grad,) = torch.autograd.grad(out, live)
    (expected,) = torch.autograd.grad(reference, live)
    torch.testing.assert_close(grad, expected, rtol=1e-11, atol=1e-12)


def test_triton_refuses_probability_targets(monkeypatch):
    """The Triton kernel takes class indices: forced, it says so rather than computing
    something else (auto takes the PyTorch operations on CUDA tensors)."""
    monkeypatch.setenv("SMOOTHTOPK_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="Triton kernel takes class indices"):
        smooth_topk_svm_loss(torch.randn(4, 5), torch.rand(4, 5), k=2)
