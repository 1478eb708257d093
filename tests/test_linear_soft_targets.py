"""The fused linear loss with probability targets and label smoothing (issue #23: "every option
the unfused loss has").

Evidence: ``linear_smooth_topk_svm_loss(x, W, q, linear_bias=b, label_smoothing=eps, ...)``
equals ``smooth_topk_svm_loss(F.linear(x, W, b), q, label_smoothing=eps, ...)`` in value and in
the gradients of ``x``, ``W``, ``b`` and of probability targets (autograd through the unfused
loss, float64), for every reduction, class weights, per-class margins, ignored rows, chunk sizes
that do and do not divide ``N``, on every backend (Triton in its interpreter, float32); at
``k = 1, alpha = 0`` it equals ``F.linear_cross_entropy`` with the same targets and smoothing;
``"mean"``/``"sum"`` allow one backward (gradients formed in the forward), the checkpointed
road (``"none"``, a target that requires grad, ``torch.compile``) ``retain_graph`` and double
backward; no ``(N, C)`` tensor is formed for class indices under label smoothing; bad
operands give clear errors.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from backend_suite import few, precise_dtype
from memory_probe import LargestTensor
from smoothtopk import (
    LinearSmoothTopkSVMLoss,
    linear_smooth_topk_svm_loss,
    linear_topk_counts,
    smooth_topk_svm_loss,
)
from smoothtopk.linear import DOUBLE_BACKWARD

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
on_cpu = pytest.mark.skipif(INTERPRETING, reason="the CPU suite runs outside the interpreter")
N, D, C = 10, 6, 23


def _operands(dtype, probabilities, n=N, d=D, c=C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(c, d, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    if probabilities:  # mixup-like: two classes per row, plus a little everywhere
        logits = torch.randn(n, c, generator=gen, dtype=torch.float64)
        y = logits.softmax(dim=1).to(dtype)
    else:
        y = torch.randint(0, c, (n,), generator=gen)
        y[n // 3] = -100
    return x, w, b, y


def _value_and_grads(loss, tensors, create_graph=False):
    """The loss and ``d<out, grad_out>/d tensors`` (``grad_out`` random for ``"none"``); the
    target's gradient too when it is floating."""
    leaves = [t.clone().requires_grad_() for t in tensors]
    out = loss(*leaves)
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.rand(out.shape, generator=gen, dtype=torch.float64).to(out.dtype) + 0.5
    return out, torch.autograd.grad(out, leaves, grad_out, create_graph=create_graph)


def _tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)


def _compare(dtype, probabilities=True, chunk_size=None, **options):
    """Fused against unfused: the value and the gradients of x, W, b (and q)."""
    x, w, b, y = _operands(dtype, probabilities)
    tensors = (x, w, b, y) if probabilities else (x, w, b)

    def fused(x, w, b, q=y):
        return linear_smooth_topk_svm_loss(x, w, q, linear_bias=b, chunk_size=chunk_size,
                                           **options)  # fmt: skip

    def unfused(x, w, b, q=y):
        return smooth_topk_svm_loss(F.linear(x, w, b), q, **options)

    got, want = _value_and_grads(fused, tensors), _value_and_grads(unfused, tensors)
    assert got[0].shape == want[0].shape and got[0].dtype == want[0].dtype
    torch.testing.assert_close(got[0], want[0], **_tolerance(dtype))
    for a, e in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, e, **_tolerance(dtype))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
@pytest.mark.parametrize("probabilities", [True, False], ids=["probabilities", "indices"])
def test_equals_the_unfused_loss(every_backend, reduction, chunk_size, probabilities):
    if few(every_backend) and (chunk_size != 3 or reduction == "sum"):
        pytest.skip("Triton in its interpreter: chunks of 3 (not dividing N), mean and none")
    dtype = precise_dtype(every_backend)
    weight = (torch.rand(C, generator=torch.Generator().manual_seed(2)) + 0.5).to(dtype)
    _compare(dtype, probabilities, chunk_size, k=3, tau=0.7, alpha=0.5, weight=weight,
             reduction=reduction, label_smoothing=0.2)  # fmt: skip


@pytest.mark.parametrize("probabilities", [True, False], ids=["probabilities", "indices"])
def test_per_class_margins_without_smoothing_or_with(every_backend, probabilities):
    dtype = precise_dtype(every_backend)
    margins = torch.linspace(0.0, 2.0, C, dtype=dtype)
    smoothing = 0.0 if probabilities else 0.1  # class indices reach this path by smoothing
    _compare(dtype, probabilities, 4, k=2, alpha=margins, label_smoothing=smoothing)


@on_cpu
@pytest.mark.parametrize("k", [1, 5, 12])
def test_other_k_and_a_class_as_ignore_index(k):
    x, w, b, y = _operands(torch.float64, probabilities=False)
    y[y == -100] = 4
    out = linear_smooth_topk_svm_loss(x, w, y, linear_bias=b, k=k, tau=2.0, ignore_index=4,
                                      label_smoothing=0.3, chunk_size=3)  # fmt: skip
    ref = smooth_topk_svm_loss(F.linear(x, w, b), y, k=k, tau=2.0, ignore_index=4,
                               label_smoothing=0.3)  # fmt: skip
    torch.testing.assert_close(out, ref, **_tolerance(torch.float64))


@on_cpu
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probabilities", [True, False], ids=["probabilities", "indices"])
def test_k1_is_linear_cross_entropy(reduction, probabilities):
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip(f"torch {torch.__version__} has no F.linear_cross_entropy (2.14 has)")
    x, w, b, y = _operands(torch.float64, probabilities)
    weight = torch.rand(C, dtype=torch.float64) + 0.5
    options = dict(weight=weight, reduction=reduction, label_smoothing=0.15)
    ours = _value_and_grads(
        lambda x, w, b: linear_smooth_topk_svm_loss(
            x, w, y, linear_bias=b, k=1, tau=1.0, alpha=0.0, chunk_size=4, **options
        ),
        (x, w, b),
    )
    torch_ce = _value_and_grads(
        lambda x, w, b: F.linear_cross_entropy(x, w, y, linear_bias=b, **options), (x, w, b)
    )
    torch.testing.assert_close(ours[0], torch_ce[0], rtol=1e-12, atol=1e-12)
    for got, want in zip(ours[1], torch_ce[1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@on_cpu
def test_mean_and_sum_allow_one_backward():
    """``"mean"``/``"sum"`` form the gradients in the forward, as for class indices."""
    x, w, _, q = _operands(torch.float64, probabilities=True)
    x.requires_grad_()
    out = linear_smooth_topk_svm_loss(x, w, q, k=3, label_smoothing=0.1, chunk_size=3)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError) as error:
        out.backward()
    assert DOUBLE_BACKWARD in str(error.value)


@on_cpu
@pytest.mark.parametrize("road", ["none", "target requires grad"])
def test_the_checkpointed_road_allows_retain_graph_and_double_backward(road):
    """``"none"`` and a target that requires grad take the checkpointed road: autograd as for
    the unfused loss (a second derivative, a second backward through the same graph)."""
    x, w, _, q = _operands(torch.float64, probabilities=True)
    options = dict(k=3, label_smoothing=0.1, reduction="none" if road == "none" else "mean")
    q = q.clone().requires_grad_(road != "none")

    def second_derivative(loss):
        x2, w2 = (t.clone().requires_grad_() for t in (x, w))
        (grad_x,) = torch.autograd.grad(loss(x2, w2).sum(), x2, create_graph=True)
        return torch.autograd.grad(grad_x.sum(), w2)[0]

    ours = second_derivative(lambda x, w: linear_smooth_topk_svm_loss(x, w, q, chunk_size=3,
                                                                      **options))  # fmt: skip
    theirs = second_derivative(lambda x, w: smooth_topk_svm_loss(F.linear(x, w), q, **options))
    torch.testing.assert_close(ours, theirs, **_tolerance(torch.float64))
    w2 = w.clone().requires_grad_()
    out = linear_smooth_topk_svm_loss(x, w2, q, chunk_size=3, **options).sum()
    out.backward(retain_graph=True)
    first = w2.grad.clone()
    out.backward()  # a second backward through the same graph: twice the gradient
    torch.testing.assert_close(w2.grad, 2 * first)


@on_cpu
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_label_smoothing_never_materialises_the_logits(every_backend, reduction):
    n, d, c, chunk = 64, 8, 500, 8
    x, w, b, y = _operands(torch.float32, probabilities=False, n=n, d=d, c=c)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    with LargestTensor() as seen:
        out = linear_smooth_topk_svm_loss(x, w, y, linear_bias=b, k=5, reduction=reduction,
                                          label_smoothing=0.1, chunk_size=chunk)  # fmt: skip
        out.backward(torch.ones_like(out))
    # a chunk's (8, C) tensors (the PyTorch backend pads C to its tree's width) or the weight
    assert seen.largest <= max(chunk * 2 * c, c * d) < n * c


@on_cpu
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, w, b, q = _operands(torch.float32, probabilities=True, n=12, d=4, c=40)

    def step(x, w, b):
        return linear_smooth_topk_svm_loss(x, w, q, linear_bias=b, k=3, chunk_size=5,
                                           label_smoothing=0.1)  # fmt: skip

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = _value_and_grads(compiled, (x, w, b))
    want = _value_and_grads(step, (x, w, b))
    torch.testing.assert_close(got[0], want[0])
    for a, e in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, e)


@on_cpu
def test_autocast_matmul_in_bfloat16_loss_in_float32():
    x, w, b, q = _operands(torch.float32, probabilities=True, n=32, d=16, c=200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _value_and_grads(
            lambda x, w, b: linear_smooth_topk_svm_loss(x, w, q, linear_bias=b, k=5,
                                                        chunk_size=5), (x, w, b))  # fmt: skip
        unfused = _value_and_grads(
            lambda x, w, b: smooth_topk_svm_loss(F.linear(x, w, b), q, k=5), (x, w, b)
        )
    assert fused[0].dtype == unfused[0].dtype == torch.float32
    torch.testing.assert_close(fused[0], unfused[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(fused[1], unfused[1], strict=True):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@on_cpu
def test_module_label_smoothing_and_mixup_targets():
    criterion = LinearSmoothTopkSVMLoss(D, C, bias=True, k=3, label_smoothing=0.1,
                                        chunk_size=4, dtype=torch.float64)  # fmt: skip
    assert "label_smoothing=0.1" in repr(criterion)
    assert "label_smoothing" not in repr(LinearSmoothTopkSVMLoss(D, C, k=3))
    x, _, _, q = _operands(torch.float64, probabilities=True)
    out = criterion(x, q)
    ref = smooth_topk_svm_loss(criterion.linear(x), q, k=3, label_smoothing=0.1)
    torch.testing.assert_close(out, ref, **_tolerance(torch.float64))
    with pytest.raises(ValueError, match="label_smoothing"):
        LinearSmoothTopkSVMLoss(D, C, k=3, label_smoothing=1.5)


@on_cpu
@pytest.mark.parametrize(
    "target, error, match",
    [
        (torch.rand(N, C + 1), ValueError, r"class probabilities .* shape \(10, 23\)"),
        (torch.rand(N), ValueError, r"class probabilities .* shape \(10, 23\)"),
        (torch.rand(C), ValueError, r"class probabilities .* shape \(10, 23\)"),
    ],
)  # fmt: skip
def test_bad_probability_targets(target, error, match):
    x, w, b, _ = _operands(torch.float32, probabilities=True)
    with pytest.raises(error, match=match):
        linear_smooth_topk_svm_loss(x, w, target, linear_bias=b, k=3)


@on_cpu
def test_topk_counts_refuse_probabilities():
    x, w, b, q = _operands(torch.float32, probabilities=True)
    with pytest.raises(TypeError, match="class indices"):
        linear_topk_counts(x, w, q, linear_bias=b)
