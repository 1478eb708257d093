"""The F.cross_entropy calling convention: reductions, weights, shapes, dtypes, modules, compile."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from smoothtopk import SmoothTopkSVMLoss, TopkSVMLoss, smooth_topk_svm_loss, topk_svm_loss

LOSSES = [
    pytest.param(lambda x, y, **kw: smooth_topk_svm_loss(x, y, k=3, tau=0.5, **kw), id="smooth"),
    pytest.param(lambda x, y, **kw: smooth_topk_svm_loss(x, y, k=1, tau=2.0, **kw), id="smooth-k1"),
    pytest.param(lambda x, y, **kw: topk_svm_loss(x, y, k=2, alpha=3.0, **kw), id="hard"),
]


def data(n=6, c=7, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=generator, dtype=dtype) * 2
    y = torch.randint(0, c, (n,), generator=generator)
    return x, y


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("ignore_index", [-100, 9, 4])
def test_reductions_weight_and_ignore_index(loss, ignore_index, backend):
    x, y = data()
    per_sample = loss(x, y, reduction="none", ignore_index=-1)  # nothing ignored
    y[2] = ignore_index
    valid = torch.tensor([True, True, False, True, True, True]) & (y != ignore_index)
    weight = torch.rand(7, dtype=torch.float64) + 0.5
    w = weight[y.where(valid, 0)] * valid
    kw = {"ignore_index": ignore_index}
    none = loss(x, y, weight=weight, reduction="none", **kw)
    torch.testing.assert_close(none, per_sample * w)
    torch.testing.assert_close(
        loss(x, y, weight=weight, reduction="sum", **kw), (per_sample * w).sum()
    )
    torch.testing.assert_close(
        loss(x, y, weight=weight, reduction="mean", **kw), (per_sample * w).sum() / w.sum()
    )
    torch.testing.assert_close(loss(x, y, **kw), (per_sample * valid).sum() / valid.sum())


@pytest.mark.parametrize("loss", LOSSES)
def test_all_ignored_mean_is_nan_like_cross_entropy(loss):
    x, _ = data()
    y = torch.full((6,), -100)
    assert torch.isnan(loss(x, y)) and torch.isnan(torch.nn.functional.cross_entropy(x, y))
    assert loss(x, y, reduction="sum") == 0


@pytest.mark.parametrize("loss", LOSSES)
def test_spatial_shape_equals_flattening(loss, backend):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 3, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 7, (2, 3, 4), generator=generator)
    flat_x, flat_y = x.movedim(1, -1).reshape(-1, 7), y.reshape(-1)
    none = loss(x, y, reduction="none")
    assert none.shape == (2, 3, 4)
    torch.testing.assert_close(none.reshape(-1), loss(flat_x, flat_y, reduction="none"))
    torch.testing.assert_close(loss(x, y), loss(flat_x, flat_y))
    # unbatched input (C,) with a scalar target
    torch.testing.assert_close(loss(flat_x[0], flat_y[0], reduction="none"), none.reshape(-1)[0])


def test_modules_equal_functionals_and_hold_weight_as_buffer():
    x, y = data()
    weight = torch.rand(7, dtype=torch.float64)
    module = SmoothTopkSVMLoss(k=3, tau=0.5, alpha=0.7, weight=weight, reduction="sum")
    torch.testing.assert_close(
        module(x, y),
        smooth_topk_svm_loss(x, y, k=3, tau=0.5, alpha=0.7, weight=weight, reduction="sum"),
    )
    assert "weight" in dict(module.named_buffers())
    assert module.to(torch.float32).weight.dtype == torch.float32
    hard = TopkSVMLoss(k=2, alpha=0.5, ignore_index=3)
    torch.testing.assert_close(hard(x, y), topk_svm_loss(x, y, k=2, alpha=0.5, ignore_index=3))
    assert (
        repr(SmoothTopkSVMLoss()) == "SmoothTopkSVMLoss(k=5, tau=1.0, alpha=1.0, reduction='mean')"
    )
    assert "ignore_index=3" in repr(hard) and "k=2" in repr(hard)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_dtype_preserved_and_low_precision_computed_in_float32(dtype, reduction, backend):
    x, y = data(dtype=torch.float32)
    x = (x * 1000).to(dtype).requires_grad_(True)  # large logits: no overflow in float16
    out = smooth_topk_svm_loss(x, y, k=3, reduction=reduction)
    ce = torch.nn.functional.cross_entropy(x, y, reduction=reduction)
    assert out.dtype == ce.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    reference = smooth_topk_svm_loss(x.detach().float(), y, k=3, reduction=reduction)
    torch.testing.assert_close(out.float(), reference.to(dtype).float())
    out.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_autocast_promotes_like_cross_entropy():
    linear = torch.nn.Linear(8, 7)
    inputs, y = torch.randn(5, 8), torch.randint(0, 7, (5,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = linear(inputs)
        ours = smooth_topk_svm_loss(logits, y)
        ce = torch.nn.functional.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16
    assert ours.dtype == ce.dtype == torch.float32
    ours.backward()
    assert linear.weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = data(n=64, c=100, dtype=torch.float32)
    xc = x.cuda().requires_grad_(True)
    out = smooth_topk_svm_loss(xc, y.cuda(), k=5)
    assert out.device.type == "cuda"
    out.backward()
    xx = x.clone().requires_grad_(True)
    smooth_topk_svm_loss(xx, y, k=5).backward()
    torch.testing.assert_close(out.cpu(), smooth_topk_svm_loss(x, y, k=5))
    torch.testing.assert_close(xc.grad.cpu(), xx.grad)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(backend, dynamic):
    torch._dynamo.reset()  # the backend is read while tracing: no graph from the other run
    x, y = data(n=16, c=12, dtype=torch.float32)

    def step(scores, target):
        return smooth_topk_svm_loss(scores, target, k=5, tau=0.5)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    value = compiled(a, y)
    value.backward()
    expected = step(b, y)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(a.grad, b.grad)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _forward_backward_ops(n):  # of the PyTorch implementation (see the callers)
    x = torch.randn(8, n, requires_grad=True)
    y = torch.randint(0, n, (8,))
    with _CountOps() as counter:
        smooth_topk_svm_loss(x, y, k=5).backward()
    return counter.count


def test_no_python_loop_over_classes(monkeypatch):
    monkeypatch.setenv("SMOOTHTOPK_CPU_KERNEL", "0")
    # The tree adds a few operations per doubling of n; a loop over classes would add
    # thousands.
    small, large = _forward_backward_ops(64), _forward_backward_ops(8192)
    assert large < small + 7 * 40


def test_saved_memory_is_linear_in_classes_without_k_factor(backend):
    n, c, k = 32, 2000, 10
    x = torch.randn(n, c, requires_grad=True)
    y = torch.randint(0, c, (n,))
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = smooth_topk_svm_loss(x, y, k=k, reduction="sum")
    unique = {t.data_ptr(): t.numel() for t in saved if t.data_ptr() != x.data_ptr()}
    # PyTorch code: one (N, C) tensor (the rest scores u) plus O(N k) factors; the fused kernel
    # only O(N k) factors (it recomputes u). The input itself is shared.
    budget = 8 * n * k + 4 * n + (n * c if backend == "pytorch" else 0)
    assert sum(unique.values()) <= budget
    value.backward()
