"""The fused CPU kernel as the "cpu" backend (smoothtopk.backends.cpu), called directly through
``cpu_kernel.forward`` / ``backward``, against independent references: ``F.cross_entropy``
(k = 1, alpha = 0, tau = 1), the extended-precision references of reference.py and the hard
loss (tau -> 0), in every dtype it reads; threads, large rows, its operators under
``torch.compile``. Its build: quiet import, quiet cached load, one notice on a first build, and
the portable fallback. The contract every backend answers through the public function
(reductions, weights, ignored rows, empty batches, edge rules, exactness) is the shared suites'
(``every_backend`` in ``tests/conftest.py``).
"""

import math
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from reference import hard_loss, log_space_loss_and_grad
from smoothtopk import smooth_topk_svm_loss
from smoothtopk.backends import _abi, _cpu_build
from smoothtopk.backends import cpu as cpu_kernel

INF, NAN = float("inf"), float("nan")
REDUCTIONS = ("none", "sum", "mean")


@pytest.fixture(autouse=True)
def kernel():
    # Needs a C++ compiler (and ninja, a dependency); without one the library still works,
    # slower, and test_kernel_builds_on_this_machine says why.
    if cpu_kernel.load() is None:
        pytest.skip("the fused CPU kernel could not be built")


def kernel_call(
    x, y, k, tau=1.0, alpha=1.0, weight=None, ignore_index=-100, reduction="none", grad_out=None
):
    """``(out, dL/dx)`` of the backend, with ``grad_out`` (default: ones) as upstream gradient."""
    out, saved = cpu_kernel.forward(x, y, weight, ignore_index, k, tau, alpha, reduction)
    if grad_out is None:
        grad_out = torch.ones_like(out)
    grad = cpu_kernel.backward(
        grad_out, x, y, weight, ignore_index, saved, k, tau, alpha, reduction
    )
    return out, grad


def pytorch_reference(x, y, k, tau, alpha, weight, ignore_index, reduction, grad_out, monkeypatch):
    """The PyTorch implementation of the public function, in float64."""
    monkeypatch.setenv("SMOOTHTOPK_BACKEND", "pytorch")
    x64 = x.detach().double().requires_grad_(True)
    w64 = None if weight is None else weight.double()
    out = smooth_topk_svm_loss(
        x64,
        y,
        k=k,
        tau=tau,
        alpha=alpha,
        weight=w64,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    (grad,) = torch.autograd.grad(out, x64, grad_out.double())
    return out.detach(), grad


def cross_entropy_reference(x, y, weight, ignore_index, reduction, grad_out):
    x64 = x.detach().double().requires_grad_(True)
    w64 = None if weight is None else weight.double()
    out = F.cross_entropy(x64, y, weight=w64, ignore_index=ignore_index, reduction=reduction)
    (grad,) = torch.autograd.grad(out, x64, grad_out.double())
    return out.detach(), grad


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


def test_kernel_builds_on_this_machine():
    assert cpu_kernel.load() is not None
    assert cpu_kernel.NAME == "cpu"


def test_one_operator_per_direction():
    x, y = torch.randn(6, 50), torch.tensor([1, 2, -100, 4, 5, 6])
    weight = torch.rand(50)
    for reduction in REDUCTIONS:
        with _RecordOps() as ops:
            out, saved = cpu_kernel.forward(x, y, weight, -100, 5, 1.0, 1.0, reduction)
        assert ops.names == {"smoothtopk.cpu_forward.default"}
        grad_out = torch.ones_like(out)
        with _RecordOps() as ops:
            cpu_kernel.backward(grad_out, x, y, weight, -100, saved, 5, 1.0, 1.0, reduction)
        assert ops.names == {"smoothtopk.cpu_backward.default"}


def test_unavailable_says_why_in_one_line():
    assert _abi.fits(1_000_000, 48) and not _abi.fits(1_000_000, 49)
    for dtype in cpu_kernel.DTYPES:
        assert cpu_kernel.unavailable(torch.zeros(2, 1000, dtype=dtype), 5) is None
    refused = {
        "meta": cpu_kernel.unavailable(torch.zeros(2, 1000, device="meta"), 5),
        "int": cpu_kernel.unavailable(torch.zeros(2, 1000, dtype=torch.int32), 5),
        "3-D": cpu_kernel.unavailable(torch.zeros(2, 10, 3), 5),
        "k": cpu_kernel.unavailable(torch.zeros(2, 300), 150),  # 150 log(600) > 700
    }
    for key, reason in refused.items():
        assert isinstance(reason, str) and reason and "\n" not in reason, key


def test_failed_build_warns_once_and_says_why(monkeypatch):
    def broken():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpu_kernel, "_state", {})
    monkeypatch.setattr(_cpu_build, "load_or_build", broken)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        assert cpu_kernel.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reason = cpu_kernel.unavailable(torch.zeros(2, 10), 2)
    assert "no compiler here" in reason


# --- values and gradients against F.cross_entropy: k = 1, alpha = 0, tau = 1 ----------------


def _ce_case(name):
    generator = torch.Generator().manual_seed(len(name))
    x = torch.randn(7, 9, generator=generator, dtype=torch.float64) * 3
    y = torch.randint(0, 9, (7,), generator=generator)
    weight = None
    if name == "masked classes":
        x[:, 5:] = -INF  # a restricted label set
        y = y % 5
    elif name == "only the target finite":
        x[0, 1:] = -INF
        y[0] = 0
    elif name == "target ruled out":
        x[1, 2] = -INF
        y[1] = 2
    elif name == "all -inf":
        x[2] = -INF
    elif name == "weight":
        weight = torch.rand(9, generator=generator, dtype=torch.float64) + 0.1
    elif name == "ignored":
        y[[1, 4]] = -100
        x[1, 3], x[4] = NAN, INF  # an ignored row contributes nothing, whatever its scores
    elif name == "ignored with a NaN weight":
        weight = torch.rand(9, generator=generator, dtype=torch.float64)
        y[y == 0] = 3
        y[[1, 5]] = -100
        weight[0] = NAN  # never read: the class of no counted row (and often the placeholder)
        x[5, 0] = -INF
    elif name == "all ignored":
        y[:] = 7
    return x, y, weight


CE_CASES = (
    "plain",
    "masked classes",
    "only the target finite",
    "target ruled out",
    "all -inf",
    "weight",
    "ignored",
    "ignored with a NaN weight",
    "all ignored",
)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", CE_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_k1_is_cross_entropy(name, reduction, dtype):
    x, y, weight = _ce_case(name)
    ignore_index = 7 if name == "all ignored" else -100
    x = x.to(dtype).double().to(dtype)
    grad_out = (
        torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
        if reduction == "none"
        else (torch.tensor(0.75, dtype=torch.float64))
    )
    ref, ref_grad = cross_entropy_reference(x, y, weight, ignore_index, reduction, grad_out)
    out, grad = kernel_call(
        x,
        y,
        1,
        1.0,
        0.0,
        weight,
        ignore_index,
        reduction,
        grad_out.to(torch.float64 if dtype == torch.float64 else torch.float32),
    )
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == ref.shape and grad.dtype == dtype
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tolerance, atol=tolerance, equal_nan=True)
    ignored = y == ignore_index  # cross-entropy's gradient is NaN there for NaN scores
    torch.testing.assert_close(
        grad[~ignored].double(), ref_grad[~ignored], rtol=tolerance, atol=tolerance, equal_nan=True
    )
    assert (grad[ignored] == 0).all() and (reduction != "none" or (out[ignored] == 0).all())


# --- edge cases for any k against the references -----------------------------------------------


def _finite_rows_reference(x, y, k, tau, alpha):
    """log_space reference; rows given as (scores, target)."""
    return log_space_loss_and_grad(x.double(), y, k, tau, alpha)


EDGE_CASES = {
    # name: (scores, target, k, tau, alpha, expected loss or "reference")
    "fewer than k finite others (contract)": ([[0.0, 1.0, -INF, -INF]], [0], 3, 1.0, 1.0, 0.0),
    "k=1 single finite class (contract)": ([[0.0, -INF, -INF]], [0], 1, 1.0, 0.0, 0.0),
    "k-1 finite others, large alpha": ([[5.0, 1.0, 2.0, -INF, -INF, -INF]], [0], 3, 0.1, 30.0, 0.0),
    "exactly k finite others": ([[0.0, 1.0, 2.0, -INF, -INF]], [0], 2, 1.0, 1.0, "reference"),
    "some ruled out": ([[0.3, 1.0, -INF, 2.0, -INF, 0.5]], [5], 2, 0.5, 1.0, "reference"),
}


@pytest.mark.parametrize("name", EDGE_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_ruled_out_classes(name, dtype):
    scores, target, k, tau, alpha, expected = EDGE_CASES[name]
    x, y = torch.tensor(scores, dtype=dtype), torch.tensor(target)
    out, grad = kernel_call(x, y, k, tau, alpha)
    if expected == "reference":
        # -inf as a score far below the others: the reference's limit
        finite = torch.where(torch.isinf(x.double()), -1e4, x.double())
        ref, ref_grad = _finite_rows_reference(finite, y, k, tau, alpha)
    else:
        ref, ref_grad = torch.full((1,), expected, dtype=torch.float64), torch.zeros(x.shape)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(
        grad.double(), ref_grad.double(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-12
    )
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_nan_and_inf_poison_only_their_row(dtype):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(6, 12, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    x[0, 3] = NAN
    x[1, 7] = INF
    x[2, 2] = INF  # on the target
    x[3, 3] = NAN  # on the target
    x[4, :] = -INF  # target and every other class ruled out: NaN, as cross-entropy
    x = x.to(dtype)
    out, grad = kernel_call(x, y, 3, 1.0, 1.0)
    assert out[:5].isnan().all() and grad[:5].isnan().all()
    ref, ref_grad = log_space_loss_and_grad(x[5:].double(), y[5:], 3, 1.0, 1.0)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(out[5:].double(), ref, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad[5:].double(), ref_grad, rtol=tolerance, atol=tolerance)
    for reduction in ("sum", "mean"):
        assert kernel_call(x, y, 3, reduction=reduction)[0].isnan()


def test_target_ruled_out_gives_inf_as_cross_entropy():
    x = torch.tensor([[-INF, 0.0, 1.0, 2.0]], dtype=torch.float64)
    out, grad = kernel_call(x, torch.tensor([0]), 2)
    assert out.item() == INF
    ref, ref_grad = log_space_loss_and_grad(
        torch.tensor([[-1e4, 0.0, 1.0, 2.0]]), torch.tensor([0]), 2, 1.0, 1.0
    )
    torch.testing.assert_close(grad, ref_grad)


def _hard_loss_gradient(scores, target, k, alpha):
    """The gradient of the hard loss ``alpha + (k-th largest other - s_y) / k`` away from its
    kinks (the k-th largest other score unique, the hinge not at 0)."""
    others = sorted((j for j in range(len(scores)) if j != target), key=lambda j: -scores[j])
    grad = [0.0] * len(scores)
    if alpha + (scores[others[k - 1]] - scores[target]) / k > 0:
        grad[others[k - 1]], grad[target] = 1.0 / k, -1.0 / k
    return grad


OVERFLOW_CASES = {
    # the contract's examples: alpha / tau and |s| / (k tau) far beyond the double range
    "alpha 1e300, tau 1e-30 (contract)": ([0.5, 0.3], 1, 1, 1e-30, 1e300, torch.float64),
    "float32 1e30 score, tau 1e-30 (contract)": (
        [1077.4, 1e30, -645.2],
        2,
        2,
        1e-30,
        0.5,
        torch.float32,
    ),
    "float32, tau below float's range": (
        [3.0, -1.0, 2.0, 0.5, 1.5],
        1,
        2,
        1e-40,
        1.0,
        torch.float32,
    ),
    "float64, tau 1e-300": ([3.0, -1.0, 2.0, 0.5, 1.5], 1, 3, 1e-300, 2.0, torch.float64),
    "hinge inactive, tau 1e-30": ([10.0, 0.0, 1.0], 0, 1, 1e-30, 1.0, torch.float32),
}


@pytest.mark.parametrize("name", OVERFLOW_CASES)
def test_extreme_tau_and_alpha_give_the_hard_loss(name):
    scores, target, k, tau, alpha, dtype = OVERFLOW_CASES[name]
    x, y = torch.tensor([scores], dtype=dtype), torch.tensor([target])
    out, grad = kernel_call(x, y, k, tau, alpha)
    rounded = x[0].double().tolist()
    expected = hard_loss(rounded, target, k, alpha)  # tau log C(n, k) below its rounding
    assert math.isfinite(out.item())
    assert out.item() == pytest.approx(expected, rel=1e-7)
    expected_grad = torch.tensor(
        _hard_loss_gradient(rounded, target, k, alpha), dtype=torch.float64
    )
    torch.testing.assert_close(grad[0].double(), expected_grad, rtol=1e-7, atol=0)


@pytest.mark.parametrize("tau", [1e30, 1e37])
def test_huge_tau_against_reference(tau):
    # k tau = 2e37: the exponent is formed in double; float32 differences of 6e38 overflow
    x = torch.tensor([[3e38, -3e38, 1e38, 0.0, -2e38]], dtype=torch.float32)
    y = torch.tensor([3])
    out, grad = kernel_call(x, y, 2, tau, 1.0)
    ref, ref_grad = log_space_loss_and_grad(x.double(), y, 2, tau, 1.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)
    # class 1: u = e^{-20} at tau = 1e37 (its float32 difference to the anchor overflows)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-30)


def test_expanded_upstream_gradient():
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(5, 30, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 30, (5,), generator=generator)
    grad_out = torch.tensor(2.0, dtype=torch.float64).expand(5)  # as from out.sum().backward()
    _, grad = kernel_call(x, y, 4, grad_out=grad_out)
    _, ref_grad = log_space_loss_and_grad(x, y, 4, 1.0, 1.0)
    torch.testing.assert_close(grad, 2.0 * ref_grad, rtol=1e-12, atol=1e-14)


# --- the algorithm: dtypes, sizes, threads, torch.compile -------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, tau", [(1, 1.0), (5, 1.0), (5, 0.01), (20, 0.5)])
def test_against_extended_precision_reference(dtype, k, tau):
    generator = torch.Generator().manual_seed(k)
    x = (torch.randn(12, 300, generator=generator, dtype=torch.float64) * 3).to(dtype)
    x[0, :40] = x[0, 40]  # ties across the anchor
    y = torch.randint(0, 300, (12,), generator=generator)
    out, grad = kernel_call(x, y, k, tau, 1.0)
    ref, ref_grad = log_space_loss_and_grad(x.double(), y, k, tau, 1.0)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tolerance, atol=tolerance)
    scale = ref_grad.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(grad.double() / scale, ref_grad / scale, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_read_directly_and_computed_exactly(dtype):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 300, generator=generator) * 4).to(dtype)
    y = torch.randint(0, 300, (16,), generator=generator)
    out, grad = kernel_call(x, y, 5)
    assert out.dtype == torch.float32 and grad.dtype == dtype
    # the exact loss and gradient of the same (rounded) scores; the gradient to one unit in the
    # last place of the dtype (rounding a float32 result may differ from rounding the exact)
    ref, ref_grad = log_space_loss_and_grad(x.double(), y, 5, 1.0, 1.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)
    info = torch.finfo(dtype)
    ulp = {"rtol": info.eps, "atol": info.smallest_normal * info.eps}
    torch.testing.assert_close(grad, ref_grad.to(dtype), **ulp)


def test_threads_do_not_change_results():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2000, generator=generator)
    y = torch.randint(0, 2000, (64,), generator=generator)
    weight = torch.rand(2000, generator=generator)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(
                kernel_call(x, y, 5, weight=weight, reduction="mean", grad_out=torch.tensor(1.0))
            )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_non_contiguous_and_large_rows():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(50_021, 3, generator=generator).t()  # (3, 50021), not contiguous
    y = torch.tensor([0, 25_000, 50_020])
    out, grad = kernel_call(x, y, 5)
    ref, ref_grad = log_space_loss_and_grad(x.double(), y, 5, 1.0, 1.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_traces_both_operators(compiler, monkeypatch):
    torch._dynamo.reset()
    x = torch.randn(8, 40, dtype=torch.float64)
    y = torch.tensor([1, 2, 3, -100, 5, 6, 7, 8])
    weight = torch.rand(40, dtype=torch.float64)
    grad_out = torch.tensor(1.0, dtype=torch.float64)

    def step(scores, target, w, g):
        assert cpu_kernel.unavailable(scores, 3) is None
        out, saved = cpu_kernel.forward(scores, target, w, -100, 3, 0.5, 1.0, "mean")
        return out, cpu_kernel.backward(g, scores, target, w, -100, saved, 3, 0.5, 1.0, "mean")

    graphs = []

    def record(graph_module, example_inputs):
        graphs.append({str(node.target) for node in graph_module.graph.nodes})
        return torch._dynamo.lookup_backend(compiler)(graph_module, example_inputs)

    out, grad = torch.compile(step, backend=record, fullgraph=True)(x, y, weight, grad_out)
    operators = {"smoothtopk.cpu_forward.default", "smoothtopk.cpu_backward.default"}
    # fullgraph: one graph per compilation, with both operators
    assert graphs and all(operators <= graph for graph in graphs)
    ref, ref_grad = pytorch_reference(
        x, y, 3, 0.5, 1.0, weight, -100, "mean", grad_out, monkeypatch
    )
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


# --- the build: quiet import, quiet cached load, one notice on a first build ------------------

QUIET = """
import sys
import smoothtopk
assert "torch.utils.cpp_extension" not in sys.modules
assert smoothtopk.backends.cpu.load() is not None  # built by this session: loaded, not compiled
assert "torch.utils.cpp_extension" not in sys.modules
"""


def test_import_and_cached_load_print_nothing():
    done = subprocess.run(
        [sys.executable, "-c", QUIET], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr


FIRST_BUILD = """
import torch
from smoothtopk.backends import _cpu_build, cpu

real_compile = _cpu_build._compile
def native_refused(name, root, flags, ldflags):
    if "portable" not in name:
        raise RuntimeError("no -march=native here")
    real_compile(name, root, flags, ldflags)
_cpu_build._compile = native_refused
assert cpu.load() is not None
"""

CHECK = """
import torch
from reference import log_space_loss_and_grad
from smoothtopk.backends import cpu
assert cpu.load() is not None
x, y = torch.randn(6, 300, dtype=torch.float64), torch.randint(0, 300, (6,))
out, saved = cpu.forward(x, y, None, -100, 5, 1.0, 1.0, "none")
torch.testing.assert_close(out, log_space_loss_and_grad(x, y, 5, 1.0, 1.0)[0])
# float32 rows: the lane-bound search (8 < k < 48), the pairwise ranks and the float32 Horner
# sums of their portable (no AVX) forms, against the reference at the float32 scores
for k in (5, 12, 20):
    x = torch.randn(6, 1000)
    out, saved = cpu.forward(x, y, None, -100, k, 1.0, 1.0, "none")
    grad = cpu.backward(torch.ones_like(out), x, y, None, -100, saved, k, 1.0, 1.0, "none")
    ref, ref_grad = log_space_loss_and_grad(x.double(), y, k, 1.0, 1.0)
    torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=2e-6)
    scale = ref_grad.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(grad.double() / scale, ref_grad / scale, rtol=0, atol=2e-6)
print("portable ok")
"""


@pytest.mark.slow
def test_first_build_says_so_once_and_falls_back_to_portable_flags(tmp_path):
    # A fresh build directory: one process builds (native flags refused: the portable
    # build), saying so once on stderr; the next loads the library without a word.
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    run = dict(capture_output=True, text=True, timeout=900, env=env)
    first = subprocess.run([sys.executable, "-c", FIRST_BUILD], **run)
    assert first.returncode == 0, first.stderr[-3000:]
    notices = [line for line in first.stderr.splitlines() if line.startswith("smoothtopk:")]
    assert len(notices) == 1 and str(tmp_path) in notices[0], first.stderr
    assert "once per machine" in notices[0] and _cpu_build.AHEAD_OF_TIME in notices[0]
    second = subprocess.run([sys.executable, "-c", CHECK], **run)
    assert second.returncode == 0 and "portable ok" in second.stdout, second.stderr[-3000:]
    assert second.stderr == ""


# --- a first-call build that cannot hang (issue #19 item 4) ------------------------------------

LOAD = """
import sys, warnings
warnings.simplefilter("always")
from smoothtopk.backends import cpu
print("loaded" if cpu.load() is not None else "fell back", flush=True)
"""


def _build_env(tmp_path, **extra):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    env.pop(_cpu_build.TIMEOUT_ENV, None)
    return {**env, **extra}


@pytest.mark.slow
def test_a_build_killed_midway_does_not_hang_the_next_call(tmp_path):
    """SIGKILL a build (its whole process group, as a cancelled job) once torch's own lock file
    exists; the next process removes that stale lock under our flock, builds, and loads, without
    torch's "No CUDA runtime" line (CUDA_HOME points at a directory, no CUDA runtime here)."""
    env = _build_env(tmp_path, CUDA_HOME=str(tmp_path))
    killed = subprocess.Popen(
        [sys.executable, "-c", LOAD], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    torch_lock = tmp_path / "ext" / _cpu_build.build_name(portable=False) / _cpu_build.TORCH_LOCK
    deadline = time.monotonic() + 120
    while not torch_lock.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert torch_lock.exists(), "the build never took torch's lock"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert torch_lock.exists()  # what a killed build leaves: every later torch build waited here
    done = subprocess.run(
        [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr[-3000:]
    assert "No CUDA runtime" not in done.stderr, done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        line for line in done.stderr.splitlines() if line.startswith("smoothtopk: compiling")
    ], done.stderr[-3000:]


def test_waiting_on_another_build_gives_up_after_the_timeout(tmp_path):
    """A process holding the build lock (a build in progress) makes the next one wait at most
    SMOOTHTOPK_BUILD_TIMEOUT seconds, then fall back to the PyTorch path with one warning."""
    fcntl = pytest.importorskip("fcntl")
    root = tmp_path / "ext"
    root.mkdir()
    env = _build_env(tmp_path, **{_cpu_build.TIMEOUT_ENV: "1"})
    with open(root / f"{_cpu_build.build_name(portable=False)}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=120
        )
        waited = time.monotonic() - started
    assert done.returncode == 0 and done.stdout.strip() == "fell back", done.stderr[-3000:]
    warnings_seen = [line for line in done.stderr.splitlines() if "Warning" in line]
    assert len(warnings_seen) == 1 and "another process" in warnings_seen[0], done.stderr
    assert _cpu_build.TIMEOUT_ENV in warnings_seen[0]
    assert waited < 60  # 1 s of waiting plus start-up, never a hang


USER_SCRIPT = """\
import torch
from smoothtopk import smooth_topk_svm_loss
x = torch.randn(3, 10, requires_grad=True)
loss = smooth_topk_svm_loss(x, torch.tensor([1, 2, 3]), k=2)
loss.backward()
print("loss", loss.item())
"""


def test_without_a_compiler_one_short_warning_at_the_users_line(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    env = _build_env(tmp_path, CXX="no-such-compiler-here")
    done = subprocess.run(
        [sys.executable, "-W", "always", str(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("loss"), done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # "<file>:<line>: RuntimeWarning: ..." and the source line that warnings prints under it
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith(f"{script}:4: RuntimeWarning: smoothtopk:"), lines[0]
    assert "no-such-compiler-here" in lines[0] and "install" in lines[0]
    assert len(lines[0]) < 400 and "ninja" not in lines[0]
    assert not (tmp_path / "ext").exists()  # nothing tried, nothing written


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_build_timeout_is_named(value, monkeypatch):
    monkeypatch.setenv(_cpu_build.TIMEOUT_ENV, value)
    with pytest.raises(_cpu_build.BuildError, match=_cpu_build.TIMEOUT_ENV):
        _cpu_build.timeout()
