"""Probability targets and label smoothing (issue #24): the expected loss ``sum_c q_c L(s, c)``.

References, none of them the code under test: the definition over all k-subsets in extended
precision (:func:`reference.brute_force_loss`), the class-index loss summed class by class
(itself tested against the references in test_exactness.py), ``F.cross_entropy`` for the
``k = 1, alpha = 0, tau = 1`` member.
"""

import math
import os
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import backend_suite
from backend_suite import few, force, only_some_when_interpreted, precise_dtype
from reference import brute_force_loss
from smoothtopk import SmoothTopkSVMLoss, TopkSVMLoss, backends, smooth_topk_svm_loss, topk_svm_loss
from smoothtopk.backends import every_class

INF = math.inf
#: the implementations of the expected loss: the fused CPU kernel, the Triton kernel (CPU tensors
#: in Triton's interpreter: float32, few small rows) and PyTorch operations
DENSE_BACKENDS = [
    "cpu",
    "pytorch",
    pytest.param("triton", marks=pytest.mark.interpreted),
]
#: float32 tolerances of a backend that takes no float64 (Triton) against a float64 reference of
#: the same (rounded) inputs: the output's rounding, float64 inside
FLOAT32 = dict(rtol=2e-6, atol=1e-6)


@pytest.fixture(params=DENSE_BACKENDS)
def dense_backend(request, monkeypatch):
    return force(request.param, monkeypatch)


def _dtype(backend: str) -> torch.dtype:
    """The backend's precise dtype: float64, float32 for Triton."""
    return precise_dtype(backend)


def _tolerance(backend: str, rtol: float, atol: float) -> dict:
    """The test's float64 tolerances, or :data:`FLOAT32` for a backend without float64."""
    return dict(rtol=rtol, atol=atol) if _dtype(backend) == torch.float64 else FLOAT32


@contextmanager
def _reference(backend: str, monkeypatch):
    """The context of a float64 reference: the PyTorch backend for a backend without float64
    (forced, it would refuse the reference's float64 scores), else the backend itself."""
    if _dtype(backend) == torch.float64:
        yield
        return
    with monkeypatch.context() as patch:
        patch.setenv(backends.ENV, "pytorch")
        yield


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
    k, classes, tau, spread, dense_backend, monkeypatch
):
    if classes > 64:
        only_some_when_interpreted(dense_backend, "the cases of at most 64 classes")
    torch.manual_seed(k * classes)
    dtype = _dtype(dense_backend)
    scores = (torch.randn(4, classes, dtype=torch.float64) * spread).to(dtype).requires_grad_()
    q = torch.rand(4, classes, dtype=torch.float64).softmax(dim=1)
    options = dict(k=k, tau=tau, alpha=1.0)
    with _reference(dense_backend, monkeypatch):
        precise = scores.detach().double().requires_grad_()
        reference = _expected_by_class(smooth_topk_svm_loss, precise, q, **options)
        (expected,) = torch.autograd.grad(reference.sum(), precise)
    out = smooth_topk_svm_loss(scores, q.to(dtype), reduction="none", **options)
    torch.testing.assert_close(out.double(), reference, **_tolerance(dense_backend, 1e-13, 1e-14))
    (grad,) = torch.autograd.grad(out.sum(), scores)
    tolerance = _tolerance(dense_backend, 1e-11, 1e-12)
    torch.testing.assert_close(grad.double(), expected, **tolerance)


def test_float32_is_as_exact_as_its_rounding(dense_backend, monkeypatch):
    torch.manual_seed(0)
    rows, classes = (8, 40) if few(dense_backend) else (64, 100)
    scores = torch.randn(rows, classes) * 4
    q = torch.rand(rows, classes).softmax(dim=1)
    out = smooth_topk_svm_loss(scores, q, k=5, tau=0.3, reduction="none")
    with _reference(dense_backend, monkeypatch):
        reference = smooth_topk_svm_loss(
            scores.double(), q.double(), k=5, tau=0.3, reduction="none"
        )
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
    if label_smoothing != 0.1 or reduction == "sum":
        only_some_when_interpreted(dense_backend, "label_smoothing=0.1, means and per row")
    torch.manual_seed(1)
    dtype = _dtype(dense_backend)
    scores = torch.randn(4, 6, 3, dtype=torch.float64).to(dtype).requires_grad_()
    if kind == "indices":
        target = torch.randint(0, 6, (4, 3))
        target[1, 2] = -100
    else:
        target = torch.rand(4, 6, 3, dtype=torch.float64).softmax(dim=1).to(dtype)
    weight = (torch.rand(6, dtype=torch.float64) + 0.1).to(dtype) if weighted else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    out = smooth_topk_svm_loss(scores, target, k=1, tau=1.0, alpha=0.0, **options)
    precise = scores.detach().double().requires_grad_()
    as_double = (lambda x: x) if dtype == torch.float64 else (lambda x: x.double())
    target = as_double(target) if target.is_floating_point() else target
    options["weight"] = None if weight is None else weight.double()
    expected = F.cross_entropy(precise, target, **options)
    tolerance = _tolerance(dense_backend, 1e-12, 1e-14)
    torch.testing.assert_close(out.double(), expected, **tolerance)
    (grad,) = torch.autograd.grad(out.sum(), scores)
    (expected_grad,) = torch.autograd.grad(expected.sum(), precise)
    torch.testing.assert_close(grad.double(), expected_grad, **tolerance)


def test_label_smoothing_is_the_mixture_of_the_class_index_losses(dense_backend):
    torch.manual_seed(2)
    dtype = _dtype(dense_backend)
    scores = torch.randn(5, 9, dtype=torch.float64).to(dtype)
    target = torch.tensor([0, 3, -100, 8, 2])
    weight = torch.rand(9, dtype=torch.float64).to(dtype)
    eps = 0.2
    options = dict(k=3, tau=0.5, alpha=1.0)
    own = smooth_topk_svm_loss(scores, target, weight=weight, reduction="none", **options)
    valid = target != -100
    every = _expected_by_class(smooth_topk_svm_loss, scores, weight.expand(5, 9), **options)
    expected = torch.where(valid, (1 - eps) * own + eps / 9 * every, 0.0)
    out = smooth_topk_svm_loss(
        scores, target, weight=weight, reduction="none", label_smoothing=eps, **options
    )
    torch.testing.assert_close(out, expected, **_tolerance(dense_backend, 1e-12, 1e-14))
    mean = smooth_topk_svm_loss(scores, target, weight=weight, label_smoothing=eps, **options)
    torch.testing.assert_close(mean, expected.sum() / weight[target[valid]].sum())


def test_probabilities_with_weight_and_smoothing_are_the_smoothed_distribution(dense_backend):
    torch.manual_seed(3)
    dtype = _dtype(dense_backend)
    scores = torch.randn(4, 7, dtype=torch.float64).to(dtype)
    q = torch.rand(4, 7, dtype=torch.float64).softmax(dim=1).to(dtype)
    weight = torch.rand(7, dtype=torch.float64).to(dtype)
    eps = 0.3
    smoothed = (1 - eps) * q + eps / 7
    expected = _expected_by_class(smooth_topk_svm_loss, scores, smoothed * weight, k=2)
    out = smooth_topk_svm_loss(scores, q, k=2, weight=weight, label_smoothing=eps)
    torch.testing.assert_close(out, expected.mean(), **_tolerance(dense_backend, 1e-12, 1e-14))


def test_two_hot_targets_mix_two_class_index_losses(dense_backend):
    """Mixup's targets: lambda and 1 - lambda on two classes."""
    torch.manual_seed(4)
    dtype = _dtype(dense_backend)
    scores = torch.randn(6, 10, dtype=torch.float64).to(dtype)
    first, second = torch.randint(0, 10, (6,)), torch.randint(0, 10, (6,))
    lam = 0.7
    q = lam * F.one_hot(first, 10).to(dtype) + (1 - lam) * F.one_hot(second, 10).to(dtype)
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
    """Float64 (gradcheck's finite differences): not Triton, whose gradient is checked
    against the float64 reference by the other tests and whose double backward is the
    autograd Function shared with the CPU kernel."""
    if _dtype(dense_backend) != torch.float64:
        pytest.skip(f"{dense_backend} takes no float64 scores; gradcheck needs them")
    torch.manual_seed(5)
    scores = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    q = torch.rand(3, 6, dtype=torch.float64).softmax(dim=1)

    def loss(s):
        return smooth_topk_svm_loss(s, q, k=2, tau=0.7, label_smoothing=0.1)

    assert torch.autograd.gradcheck(loss, (scores,))
    assert torch.autograd.gradgradcheck(loss, (scores,))


def test_gradient_flows_to_probability_targets(dense_backend):
    """As F.cross_entropy: d loss / d q_c = l_c (e.g. a learned teacher's distribution)."""
    dtype = _dtype(dense_backend)
    scores = torch.randn(2, 5, dtype=torch.float64).to(dtype)
    q = torch.rand(2, 5, dtype=torch.float64).softmax(dim=1).to(dtype).requires_grad_()
    smooth_topk_svm_loss(scores, q, k=2, reduction="sum").backward()
    expected = every_class.smooth_losses(scores.double(), 2, 1.0, 1.0).to(dtype)
    torch.testing.assert_close(q.grad, expected)


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
def test_edge_rows_and_margins_equal_the_class_index_losses(dense_backend, k, monkeypatch):
    """-inf classes, rows with k + 1, k and k - 1 finite scores, a NaN row, per-class
    margins: value and gradient as the class-index losses summed class by class."""
    torch.manual_seed(k)
    classes = 12
    dtype = _dtype(dense_backend)
    scores = _edge_rows(classes, k).to(dtype)
    scores[0, 2] = math.nan
    q = torch.rand(5, classes, dtype=torch.float64).softmax(dim=1).to(dtype)
    alpha = torch.rand(classes, dtype=torch.float64).to(dtype)
    live = scores.clone()
    live[0, 2] = 0.0
    live.requires_grad_()
    precise = live.detach().double().requires_grad_()
    options = dict(k=k, tau=0.5, alpha=alpha.double())
    out = smooth_topk_svm_loss(scores, q, k=k, tau=0.5, alpha=alpha, reduction="none")
    rows = [1, 2]  # rows of finite loss (a -inf class of row 3 has k finite others: +inf)
    # the class-index loss in the same process (the pytorch backend unless forced otherwise;
    # in float64, by the pytorch backend, for a backend without float64)
    with _reference(dense_backend, monkeypatch):
        reference = _expected_by_class(smooth_topk_svm_loss, scores.double(), q.double(),
                                       **options)  # fmt: skip
        by_class = _expected_by_class(smooth_topk_svm_loss, precise[rows], q[rows].double(),
                                      **options).sum()  # fmt: skip
    tolerance = _tolerance(dense_backend, 1e-12, 1e-13)
    torch.testing.assert_close(out.double(), reference, **tolerance, equal_nan=True)
    assert out[0].isnan()
    out = smooth_topk_svm_loss(live[rows], q[rows], k=k, tau=0.5, alpha=alpha, reduction="sum")
    (grad,) = torch.autograd.grad(out, live)
    (expected,) = torch.autograd.grad(by_class, precise)
    tolerance = _tolerance(dense_backend, 1e-11, 1e-12)
    torch.testing.assert_close(grad.double(), expected, **tolerance)


@pytest.mark.interpreted
def test_triton_computes_probability_targets_when_forced(monkeypatch):
    """SMOOTHTOPK_BACKEND=triton computes probability targets and label smoothing (the
    every-class kernel), and refuses what it cannot compute (float64) saying why."""
    force("triton", monkeypatch)
    torch.manual_seed(9)
    scores, q = torch.randn(4, 7), torch.rand(4, 7).softmax(dim=1)
    out = smooth_topk_svm_loss(scores, q, k=2, label_smoothing=0.1)
    with _reference("triton", monkeypatch):
        expected = smooth_topk_svm_loss(scores.double(), q.double(), k=2, label_smoothing=0.1)
    torch.testing.assert_close(out.double(), expected, **FLOAT32)
    with pytest.raises(RuntimeError, match="SMOOTHTOPK_BACKEND=triton cannot.*float64"):
        smooth_topk_svm_loss(scores.double(), q.double(), k=2)


def test_triton_forced_says_why_it_cannot(monkeypatch):
    """Forced on CPU tensors outside the interpreter (or without Triton), the Triton backend
    says why rather than computing elsewhere."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter computes CPU tensors")
    monkeypatch.setenv(backends.ENV, "triton")
    with pytest.raises(RuntimeError, match="SMOOTHTOPK_BACKEND=triton cannot compute"):
        smooth_topk_svm_loss(torch.randn(4, 5), torch.rand(4, 5), k=2)


@pytest.fixture
def auto_reaches_triton(monkeypatch):
    """:func:`backend_suite.auto_reaches_triton`, and the every-class checks made."""
    triton_backend = backend_suite.auto_reaches_triton(monkeypatch)
    calls = []
    real = triton_backend._expected_disagreement
    monkeypatch.setattr(
        triton_backend, "_expected_disagreement", lambda *a: calls.append(a[1]) or real(*a)
    )
    return triton_backend, calls


@pytest.mark.interpreted
def test_auto_checks_the_every_class_kernel_once_per_kind(auto_reaches_triton, monkeypatch):
    triton_backend, calls = auto_reaches_triton
    torch.manual_seed(10)
    scores, q = torch.randn(6, 20) * 2, torch.rand(6, 20).softmax(dim=1)
    call = (q, 0.5, 1.0)
    assert backends.every_class_loss(scores, 3, call) is triton_backend.expected
    assert backends.every_class_loss(scores, 3, call) is triton_backend.expected
    assert calls == [3]  # checked once for this kind
    out = smooth_topk_svm_loss(scores, q, k=3, tau=0.5, reduction="none")
    assert calls == [3]
    expected = every_class.expected(scores.double(), q.double(), 3, 0.5, 1.0)
    torch.testing.assert_close(out.double(), expected, **FLOAT32)

    real = triton_backend.triton_every_class

    def wrong(*args):  # a kernel whose losses are 5 % off, as a miscompiled one could be
        out, grad = real(*args)
        return out * 1.05, grad

    monkeypatch.setattr(triton_backend, "triton_every_class", wrong)
    with pytest.warns(RuntimeWarning, match="disagreed with the PyTorch path") as seen:
        assert backends.every_class_loss(scores, 2, (q, 0.5, 1.0)) is every_class.expected
    seen = [w for w in seen if "disagreed" in str(w.message)]  # not the interpreter's own
    assert len(seen) == 1 and "probability targets, k=2" in str(seen[0].message)
    assert backends.every_class_loss(scores, 2, (q, 0.5, 1.0)) is every_class.expected
    assert calls == [3, 2]  # and no second check, no second warning


@pytest.mark.parametrize("k", [2, 5])
def test_a_class_far_ahead_at_a_small_temperature(dense_backend, monkeypatch, k):
    """tau = 1e-3 and a top class 3.7 ahead: its e^{(s - a)/(k tau)} is far beyond the double
    range; the gradient is finite and the class-by-class one (the PyTorch path once gave NaN)."""
    torch.manual_seed(k)
    dtype = _dtype(dense_backend)
    scores = torch.randn(2, 20, dtype=torch.float64)
    scores[0, 13], scores[0, 3] = 5.06, 1.40
    scores = scores.to(dtype).requires_grad_()
    q = torch.rand(2, 20, dtype=torch.float64).softmax(dim=1)
    options = dict(k=k, tau=1e-3, alpha=1.0)
    with _reference(dense_backend, monkeypatch):
        precise = scores.detach().double().requires_grad_()
        reference = _expected_by_class(smooth_topk_svm_loss, precise, q, **options)
        (expected,) = torch.autograd.grad(reference.sum(), precise)
    out = smooth_topk_svm_loss(scores, q.to(dtype), reduction="sum", **options)
    (grad,) = torch.autograd.grad(out, scores)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad.double(), expected, **_tolerance(dense_backend, 1e-11, 1e-12))
