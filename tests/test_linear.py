"""The fused linear + smooth top-k loss (issue #23) against the unfused one.

Evidence: ``linear_smooth_topk_svm_loss(x, W, y, linear_bias=b, ...)`` equals
``smooth_topk_svm_loss(F.linear(x, W, b), y, ...)`` in value and in the gradients of ``x``,
``W`` and ``b`` (autograd through the unfused loss), for every reduction, class weights,
ignored rows, per-class margins, chunk sizes that do and do not divide ``N``, on every backend
(``every_backend``; Triton in its interpreter, float32, few small cases); ``k = 1, alpha = 0``
equals ``F.linear_cross_entropy``; no tensor of ``N x C`` elements is ever allocated; bad
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
from smoothtopk.linear import DOUBLE_BACKWARD, chunk_rows
from smoothtopk.metrics import topk_counts

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
on_cpu = pytest.mark.skipif(INTERPRETING, reason="the CPU suite runs outside the interpreter")
N, D, C = 10, 6, 23


def _operands(dtype, n=N, d=D, c=C, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(c, d, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    y = torch.randint(0, c, (n,), generator=gen)
    y[n // 3] = -100
    return x, w, b, y


def _value_and_grads(loss, x, w, b, grad_out_seed=1):
    """The loss and ``d<out, grad_out>/d(x, W, b)`` (``grad_out`` random for ``"none"``)."""
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    out = loss(*leaves)
    gen = torch.Generator().manual_seed(grad_out_seed)
    grad_out = torch.rand(out.shape, generator=gen, dtype=torch.float64).to(out.dtype) + 0.5
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), grads


def _tolerance(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)


def _compare(dtype, bias=True, n=N, c=C, **options):
    """Fused against unfused, values and the gradients of every operand."""
    x, w, b, y = _operands(dtype, n=n, c=c, bias=bias)
    chunk = options.pop("chunk_size", None)
    fused = _value_and_grads(
        lambda x, w, *b: linear_smooth_topk_svm_loss(
            x, w, y, linear_bias=b[0] if b else None, chunk_size=chunk, **options
        ),
        x, w, b,
    )  # fmt: skip
    unfused = _value_and_grads(
        lambda x, w, *b: smooth_topk_svm_loss(F.linear(x, w, b[0] if b else None), y, **options),
        x, w, b,
    )  # fmt: skip
    tol = _tolerance(dtype)
    torch.testing.assert_close(fused[0], unfused[0], **tol)
    for got, want in zip(fused[1], unfused[1], strict=True):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [1, 3, 10, 16, None])
def test_equals_the_unfused_loss(every_backend, reduction, chunk_size):
    if few(every_backend) and chunk_size not in (3, None):
        pytest.skip("Triton in its interpreter: chunks of 3 (not dividing N) and the default")
    weight = torch.rand(C, dtype=torch.float64) + 0.5
    dtype = precise_dtype(every_backend)
    _compare(dtype, k=3, tau=0.7, alpha=0.5, weight=weight.to(dtype), reduction=reduction,
             chunk_size=chunk_size)  # fmt: skip


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_per_class_margins_and_no_bias(every_backend, reduction):
    dtype = precise_dtype(every_backend)
    margins = torch.linspace(0.0, 2.0, C, dtype=dtype)
    _compare(dtype, bias=False, k=2, alpha=margins, reduction=reduction, chunk_size=4)


@on_cpu
@pytest.mark.parametrize("k", [1, 5, 12])
def test_other_k_and_ignore_index(k):
    _compare(torch.float64, k=k, tau=2.0, ignore_index=-100, chunk_size=7)
    x, w, b, y = _operands(torch.float64)
    y[y == -100] = 4  # a class used as ignore_index
    out = linear_smooth_topk_svm_loss(x, w, y, linear_bias=b, k=k, ignore_index=4, chunk_size=3)
    ref = smooth_topk_svm_loss(F.linear(x, w, b), y, k=k, ignore_index=4)
    torch.testing.assert_close(out, ref, **_tolerance(torch.float64))


@on_cpu
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_k1_is_linear_cross_entropy(reduction):
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip(f"torch {torch.__version__} has no F.linear_cross_entropy (2.14 has)")
    x, w, b, y = _operands(torch.float64)
    weight = torch.rand(C, dtype=torch.float64) + 0.5
    options = dict(weight=weight, reduction=reduction)
    ours = _value_and_grads(
        lambda x, w, b: linear_smooth_topk_svm_loss(
            x, w, y, linear_bias=b, k=1, tau=1.0, alpha=0.0, chunk_size=4, **options
        ),
        x, w, b,
    )  # fmt: skip
    torch_ce = _value_and_grads(
        lambda x, w, b: F.linear_cross_entropy(x, w, y, linear_bias=b, **options), x, w, b
    )
    torch.testing.assert_close(ours[0], torch_ce[0], rtol=1e-12, atol=1e-12)
    for got, want in zip(ours[1], torch_ce[1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@on_cpu
def test_all_rows_ignored_and_single_sample():
    x, w, b, y = _operands(torch.float64)
    y[:] = -100
    for reduction in ("mean", "sum", "none"):
        out = linear_smooth_topk_svm_loss(x, w, y, k=2, reduction=reduction, chunk_size=4)
        ref = smooth_topk_svm_loss(F.linear(x, w), y, k=2, reduction=reduction)
        torch.testing.assert_close(out, ref, equal_nan=True)
    x1, t1 = x[0].clone().requires_grad_(), torch.tensor(3)
    out = linear_smooth_topk_svm_loss(x1, w, t1, k=2, reduction="none")
    assert out.shape == ()
    torch.testing.assert_close(
        out, smooth_topk_svm_loss(F.linear(x1, w), t1, k=2, reduction="none")
    )
    out.backward()
    assert x1.grad.shape == (D,)


@on_cpu
def test_gradients_only_where_needed_and_no_grad():
    x, w, b, y = _operands(torch.float64)
    w.requires_grad_()
    out = linear_smooth_topk_svm_loss(x, w, y, linear_bias=b, k=3, chunk_size=4)
    out.backward()
    assert x.grad is None and b.grad is None and w.grad is not None
    with torch.no_grad():
        plain = linear_smooth_topk_svm_loss(x, w, y, linear_bias=b, k=3, chunk_size=4)
    assert not plain.requires_grad
    torch.testing.assert_close(plain, out.detach())


@on_cpu
def test_one_backward_only():
    x, w, b, y = _operands(torch.float64)
    x.requires_grad_()
    out = linear_smooth_topk_svm_loss(x, w, y, k=3)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError) as error:
        out.backward()
    assert DOUBLE_BACKWARD in str(error.value)
    x.grad = None
    out = linear_smooth_topk_svm_loss(x, w, y, k=3, reduction="none")  # recomputes: twice is fine
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)
    with pytest.raises(RuntimeError) as error:
        out = linear_smooth_topk_svm_loss(x, w, y, k=3, reduction="sum")
        torch.autograd.grad(out, x, create_graph=True)
    assert DOUBLE_BACKWARD in str(error.value)


@on_cpu
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_never_materialises_the_logits(every_backend, reduction):
    n, d, c = 64, 8, 500
    x, w, b, y = _operands(torch.float32, n=n, d=d, c=c)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    with LargestTensor() as seen:
        out = linear_smooth_topk_svm_loss(x, w, y, linear_bias=b, k=5, reduction=reduction,
                                          chunk_size=8)  # fmt: skip
        out.backward(torch.ones_like(out))
    # the chunk's (8, C) scores (the PyTorch backend pads C to its tree's width) and the weight
    assert seen.largest <= max(8 * 2 * c, c * d) < n * c


@on_cpu
def test_module():
    torch.manual_seed(0)
    weight = torch.rand(C) + 0.5
    criterion = LinearSmoothTopkSVMLoss(
        D, C, bias=True, k=3, tau=0.5, alpha=0.2, chunk_size=4, weight=weight, dtype=torch.float64
    )
    assert [name for name, _ in criterion.named_parameters()] == ["linear.weight", "linear.bias"]
    assert "chunk_size=4" in repr(criterion) and "in_features=6, num_classes=23" in repr(criterion)
    x, _, _, y = _operands(torch.float64)
    out = criterion(x, y)
    ref = smooth_topk_svm_loss(criterion.linear(x), y, k=3, tau=0.5, alpha=0.2,
                               weight=criterion.weight)  # fmt: skip
    torch.testing.assert_close(out, ref)
    out.backward()
    assert criterion.linear.bias.grad.shape == (C,)
    with pytest.raises(ValueError, match="k must satisfy"):
        LinearSmoothTopkSVMLoss(D, 5, k=5)


@on_cpu
def test_autocast_matmul_in_bfloat16_loss_in_float32():
    x, w, b, y = _operands(torch.float32, n=32, d=16, c=200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _value_and_grads(
            lambda x, w, b: linear_smooth_topk_svm_loss(x, w, y, linear_bias=b, k=5,
                                                        chunk_size=5), x, w, b)  # fmt: skip
        unfused = _value_and_grads(
            lambda x, w, b: smooth_topk_svm_loss(F.linear(x, w, b), y, k=5), x, w, b
        )
    assert fused[0].dtype == unfused[0].dtype == torch.float32
    torch.testing.assert_close(fused[0], unfused[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(fused[1], unfused[1], strict=True):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@on_cpu
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, w, b, y = _operands(torch.float32, n=12, d=4, c=40)

    def step(x, w, b):
        return linear_smooth_topk_svm_loss(x, w, y, linear_bias=b, k=3, chunk_size=5)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = _value_and_grads(compiled, x, w, b)
    want = _value_and_grads(step, x, w, b)
    torch.testing.assert_close(got[0], want[0])
    for a, e in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, e)


@on_cpu
@pytest.mark.parametrize("chunk_size", [1, 3, 40, None])
def test_topk_counts_without_the_logits(chunk_size):
    x, w, b, y = _operands(torch.float64, n=40, c=30)
    x[5] = x[4]  # tied rows do not matter; tied classes do:
    w[7] = w[8]
    counts = linear_topk_counts(x, w, y, linear_bias=b, k=(1, 5), chunk_size=chunk_size)
    expected = topk_counts(F.linear(x, w, b), y, k=(1, 5))
    for got, want in zip(counts, expected, strict=True):
        assert torch.equal(got, want)


def test_chunk_rule():
    assert chunk_rows(4096, 256, 100_000) == 64  # a quarter of the weight's elements
    assert chunk_rows(4096, 256, 1000) == 1048  # the 2^20-element floor
    assert chunk_rows(10, 256, 1000) == 10 and chunk_rows(0, 16, 10) == 1


@on_cpu
@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(w=torch.randn(C, D + 1)), ValueError, r"shape \(num_classes, 6\)"),
        (dict(w=torch.randn(C)), ValueError, "linear_weight must have shape"),
        (dict(b=torch.randn(C - 1)), ValueError, r"linear_bias must have shape \(23,\)"),
        (dict(b=torch.randn(C, dtype=torch.float64)), TypeError, "linear_bias is torch.float64"),
        (dict(x=torch.randn(2, N, D)), ValueError, "input must be"),
        (dict(y=torch.zeros(N + 1).long()), ValueError, r"indices must have shape \(10,\)"),
        (dict(y=torch.zeros(N)), ValueError, r"probabilities .* must have shape \(10, 23\)"),
        (dict(y=torch.zeros(N, dtype=torch.bool)), TypeError, "integer class indices"),
        (dict(x=torch.zeros(N, D, dtype=torch.long)), TypeError, "input must be a floating"),
        (dict(chunk_size=0), ValueError, "chunk_size must be an int >= 1"),
        (dict(chunk_size=2.0), TypeError, "chunk_size must be an int"),
        (dict(k=C), ValueError, "k must satisfy"),
        (dict(weight=torch.ones(C + 1)), ValueError, "weight must have shape"),
        (dict(y=torch.full((N,), C)), ValueError, r"target must be in \[0, 23\)"),
    ],
)  # fmt: skip
def test_bad_operands(change, error, match):
    x, w, b, y = _operands(torch.float32)
    operands = dict(x=x, w=w, b=b, y=y)
    options = {}
    for key, value in change.items():
        (operands if key in operands else options)[key] = value
    with pytest.raises(error, match=match):
        linear_smooth_topk_svm_loss(operands["x"], operands["w"], operands["y"],
                                    linear_bias=operands["b"], **options)  # fmt: skip
