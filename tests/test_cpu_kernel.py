"""The fused CPU kernel (smoothtopk.cpu_kernel): built, used where it applies, equal to the
PyTorch implementation, and replaced by it (with a warning) when it cannot be built.

Its exactness against the extended-precision references is tested by the grids of
test_exactness.py and the properties of test_properties.py, which run on both implementations.
"""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reference import log_space_loss_and_grad
from smoothtopk import cpu_kernel, smooth_topk_svm_loss


class _RecordOps(TorchDispatchMode):
    """The names of the operators called, and the largest tensor each of them returned."""

    def __init__(self):
        super().__init__()
        self.names = set()
        self.largest = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        self.names.add(name)
        outputs = out if isinstance(out, tuple) else (out,)
        sizes = [t.numel() for t in outputs if torch.is_tensor(t)]
        self.largest[name] = max([self.largest.get(name, 0), *sizes])
        return out


def _loss_and_grad(x, y, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    loss = smooth_topk_svm_loss(x, y, reduction="none", **kwargs)
    loss.sum().backward()
    return loss.detach(), x.grad


def _both(x, y, monkeypatch, **kwargs):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "1")
    fused = _loss_and_grad(x, y, **kwargs)
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
    pytorch = _loss_and_grad(x, y, **kwargs)
    return fused, pytorch


def test_kernel_builds_on_this_machine():
    # Needs a C++ compiler (and ninja, a dependency); without one the library still works,
    # slower, and this test says why.
    assert cpu_kernel.load() is not None


def test_kernel_computes_forward_and_backward_unless_switched_off(monkeypatch):
    x, y = torch.randn(6, 50, requires_grad=True), torch.randint(0, 50, (6,))
    with _RecordOps() as ops:
        smooth_topk_svm_loss(x, y, k=5).backward()
    assert {"smoothtopk.forward.default", "smoothtopk.backward.default"} <= ops.names
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
    with _RecordOps() as ops:
        smooth_topk_svm_loss(x, y, k=5).backward()
    assert not any(name.startswith("smoothtopk.") for name in ops.names)


def test_compiled_graphs_call_the_kernel():
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    targets = []

    def record(graph_module, example_inputs):
        targets.extend(str(node.target) for node in graph_module.graph.nodes)
        return make_boxed_func(graph_module.forward)

    torch._dynamo.reset()
    assert cpu_kernel.load() is not None  # built by an eager call, then traced as an operator
    x, y = torch.randn(8, 40, requires_grad=True), torch.randint(0, 40, (8,))
    step = torch.compile(
        lambda a, b: smooth_topk_svm_loss(a, b, k=3),
        backend=aot_autograd(fw_compiler=record, bw_compiler=record),
        fullgraph=True,
    )
    compiled = step(x, y)
    (grad,) = torch.autograd.grad(compiled, x)
    assert "smoothtopk.forward.default" in targets and "smoothtopk.backward.default" in targets
    eager = smooth_topk_svm_loss(x, y, k=3)
    (eager_grad,) = torch.autograd.grad(eager, x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grad, eager_grad)


def test_applies_only_where_float64_sums_cannot_overflow():
    assert cpu_kernel.fits(1_000_000, 48) and not cpu_kernel.fits(1_000_000, 49)
    assert cpu_kernel.applies(torch.zeros(2, 1000), 5)
    assert not cpu_kernel.applies(torch.zeros(2, 300), 150)  # 150 log(600) > 700
    assert not cpu_kernel.applies(torch.zeros(2, 1000, device="meta"), 5)


def test_beyond_the_kernel_the_pytorch_code_is_exact():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 300, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 300, (3,), generator=generator)
    loss, grad = _loss_and_grad(x, y, k=150, tau=0.5)
    ref_loss, ref_grad = log_space_loss_and_grad(x, y, 150, 0.5, 1.0)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, tau", [(1, 1.0), (5, 1.0), (5, 0.01), (20, 0.5)])
def test_fused_equals_pytorch(dtype, k, tau, monkeypatch):
    generator = torch.Generator().manual_seed(k)
    x = (torch.randn(32, 700, generator=generator, dtype=torch.float64) * 3).to(dtype)
    x[0, :40] = x[0, 40]  # ties across the anchor
    y = torch.randint(0, 700, (32,), generator=generator)
    (loss, grad), (ref_loss, ref_grad) = _both(x, y, monkeypatch, k=k, tau=tau)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(loss, ref_loss, rtol=tolerance, atol=tolerance)
    scale = ref_grad.abs().max()
    torch.testing.assert_close(grad / scale, ref_grad / scale, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_read_directly_and_computed_exactly(dtype, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 300, generator=generator) * 4).to(dtype)
    y = torch.randint(0, 300, (16,), generator=generator)
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "1")
    with _RecordOps() as ops:
        loss, grad = _loss_and_grad(x, y, k=5)
    assert ops.largest.get("aten._to_copy.default", 0) < x.numel()  # no float32 copy of x
    assert loss.dtype == grad.dtype == dtype
    # the exact loss and gradient of the same (rounded) scores, to one unit in the last place
    # of the dtype (rounding a float32 result to the dtype may differ from rounding the exact)
    ref_loss, ref_grad = log_space_loss_and_grad(x.double(), y, 5, 1.0, 1.0)
    info = torch.finfo(dtype)
    ulp = {"rtol": info.eps, "atol": info.smallest_normal * info.eps}
    torch.testing.assert_close(loss, ref_loss.to(dtype), **ulp)
    torch.testing.assert_close(grad, ref_grad.to(dtype), **ulp)


def test_threads_do_not_change_results():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2000, generator=generator)
    y = torch.randint(0, 2000, (64,), generator=generator)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _loss_and_grad(x, y, k=5)
        torch.set_num_threads(2)
        two = _loss_and_grad(x, y, k=5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_non_contiguous_and_large_rows(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(50_021, 3, generator=generator).t()  # (3, 50021), not contiguous
    y = torch.tensor([0, 25_000, 50_020])
    (loss, grad), (ref_loss, ref_grad) = _both(x, y, monkeypatch, k=5)
    exact_loss, exact_grad = log_space_loss_and_grad(x.double(), y, 5, 1.0, 1.0)
    # float32: the fused kernel is exact to a few ulps per element; the PyTorch code to a few
    # ulps of the row's largest gradient (its float32 tree rounds small elements more).
    torch.testing.assert_close(loss.double(), exact_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(ref_loss.double(), exact_loss, rtol=1e-6, atol=0)
    scale = exact_grad.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(ref_grad.double() / scale, exact_grad / scale, rtol=0, atol=1e-6)


def test_non_finite_scores_like_the_pytorch_code(monkeypatch):
    x = torch.randn(5, 12, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4])
    x[0, 3] = float("nan")
    x[1, 7] = float("inf")
    x[2, 5:] = float("-inf")  # ruled-out classes: a finite loss, no gradient there
    x[3, 3] = float("-inf")  # the target itself ruled out: infinite loss, as cross-entropy
    (loss, grad), (ref_loss, ref_grad) = _both(x, y, monkeypatch, k=3)
    torch.testing.assert_close(loss, ref_loss, equal_nan=True)
    assert loss[0].isnan() and loss[1].isnan() and loss[2].isfinite() and loss[3] == float("inf")
    assert (grad[2, 5:] == 0).all() and torch.isfinite(grad[2]).all()
    torch.testing.assert_close(grad[2:], ref_grad[2:], equal_nan=True)


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpu_kernel, "_state", {})
    monkeypatch.setattr(cpu_kernel, "_build", broken)
    x, y = torch.randn(4, 30), torch.randint(0, 30, (4,))
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        first = smooth_topk_svm_loss(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = smooth_topk_svm_loss(x, y)
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
    torch.testing.assert_close(first, smooth_topk_svm_loss(x, y))
    assert torch.equal(first, second)


def test_double_backward_of_float32_large_k_is_computed_in_float64():
    # create_graph=True recomputes with recorded PyTorch operations, which for k > 10 must run
    # in float64 (float32 sums of ~1/b! underflow from b = 34 on).
    generator = torch.Generator().manual_seed(5)
    x64 = torch.randn(4, 200, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 200, (4,), generator=generator)
    penalties = []
    for x in (x64.float(), x64.float().double()):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(smooth_topk_svm_loss(x, y, k=40), x, create_graph=True)
        (second,) = torch.autograd.grad(grad.pow(2).sum(), x)
        penalties.append(second.double())
    scale = penalties[1].abs().max()
    torch.testing.assert_close(penalties[0] / scale, penalties[1] / scale, rtol=0, atol=1e-5)


PORTABLE_BUILD = """
import torch
from smoothtopk import cpu_kernel, smooth_topk_svm_loss

real_compile = cpu_kernel._compile
def native_refused(name, flags, ldflags):
    if name != "smoothtopk_cpu_portable":
        raise RuntimeError("no -march=native here")
    real_compile(name, flags, ldflags)
cpu_kernel._compile = native_refused
assert cpu_kernel.load() is not None
x, y = torch.randn(6, 300, dtype=torch.float64), torch.randint(0, 300, (6,))
fused = smooth_topk_svm_loss(x, y, k=5, reduction="none")
cpu_kernel.os.environ[cpu_kernel.ENV_SWITCH] = "0"
torch.testing.assert_close(fused, smooth_topk_svm_loss(x, y, k=5, reduction="none"))
print("portable ok")
"""


@pytest.mark.slow
def test_portable_build_when_native_flags_are_refused():
    # A separate process: the operators of one process can be registered only once.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", PORTABLE_BUILD], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "portable ok" in done.stdout, done.stderr[-3000:]
