"""The smooth loss's own API guarantees: its Modules' repr, compile with dynamic shapes, no
Python loop over classes, memory linear in C, the first two on every backend. The contract every
loss shares (reductions, weights, shapes, dtypes, Module = functional, compile, bad arguments) is
tests/test_contract.py.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from smoothtopk import SmoothTopkSVMLoss, TopkSVMLoss, smooth_topk_svm_loss


def data(n=6, c=7, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=generator, dtype=dtype) * 2
    y = torch.randint(0, c, (n,), generator=generator)
    return x, y


def test_module_repr():
    assert (
        repr(SmoothTopkSVMLoss()) == "SmoothTopkSVMLoss(k=5, tau=1.0, alpha=1.0, reduction='mean')"
    )
    hard = TopkSVMLoss(k=2, alpha=0.5, ignore_index=3)
    assert repr(hard) == "TopkSVMLoss(k=2, alpha=0.5, reduction='mean', ignore_index=3)"


def test_torch_compile_fullgraph_dynamic_shapes(every_backend):
    torch._dynamo.reset()  # the backend is read while tracing: no graph from the other run
    x, y = data(n=16, c=12, dtype=torch.float32)

    def step(scores, target):
        return smooth_topk_svm_loss(scores, target, k=5, tau=0.5)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=True)
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
    monkeypatch.setenv("SMOOTHTOPK_BACKEND", "pytorch")
    # The tree adds a few operations per doubling of n; a loop over classes would add
    # thousands.
    small, large = _forward_backward_ops(64), _forward_backward_ops(8192)
    assert large < small + 7 * 40


def test_saved_memory_is_linear_in_classes_without_k_factor(every_backend):
    n, c, k = 8, 2000, 10
    x = torch.randn(n, c, requires_grad=True)
    y = torch.randint(0, c, (n,))
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = smooth_topk_svm_loss(x, y, k=k, reduction="sum")
    unique = {t.data_ptr(): t.numel() for t in saved if t.data_ptr() != x.data_ptr()}
    # PyTorch code: one (N, C) tensor (the rest scores u) plus O(N k) factors; the fused kernels
    # only O(N k) factors (they recompute u). The input itself is shared.
    budget = 8 * n * k + 4 * n + (n * c if every_backend == "pytorch" else 0)
    assert sum(unique.values()) <= budget
    value.backward()
