"""The Triton backend (``smoothtopk.backends.triton``): what is its own, through its operators.

The contract every backend answers (exactness on the grid, edge rules, reductions, weights,
ignored rows, margins, compile) runs on Triton through the shared suites (``every_backend`` in
``tests/conftest.py``); here: every k up to 32, chunked and split rows, half inputs, the fakes,
the sm_90 compile, the GPU runs, declining an old Triton and ``auto``'s self-check.

Without a GPU the kernels run in Triton's interpreter, which must be switched on before Triton
is first imported (``torch._dynamo`` imports it): the ``interpreted`` tests run in a pytest
session of their own that ``make test`` starts (``TRITON_INTERPRET=1 pytest -m interpreted``;
``tests/conftest.py`` skips them elsewhere). The sm_90 ahead-of-time compile needs no GPU; the
``cuda`` tests need one.
"""

import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import backend_suite
from exactness_grid import BOUNDS, _errors, cells, grid_inputs
from reference import log_space_loss_and_grad
from smoothtopk import smooth_topk_svm_loss
from smoothtopk.backends import triton as triton_kernel

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.interpreted
cuda = pytest.mark.skipif(
    INTERPRETING or not torch.cuda.is_available(), reason="needs a CUDA device"
)
LOSS_BOUND, GRAD_BOUND = BOUNDS[torch.float32]  # the float32 targets of docs/exactness.md
triton = pytest.importorskip("triton")


def run(
    scores,
    target,
    k,
    tau=1.0,
    alpha=1.0,
    weight=None,
    ignore_index=-100,
    reduction="none",
    splits=1,
    grad_out=None,
):
    """``(out, dOut/dscores)`` through the two operators (``grad_out`` defaults to ones)."""
    out, stats = triton_kernel.triton_forward(
        scores, target, weight, ignore_index, k, tau, alpha, reduction, None, splits
    )
    grad_out = torch.ones_like(out) if grad_out is None else grad_out
    grad = triton_kernel.triton_backward(
        grad_out, scores, target, stats, ignore_index, k, tau, reduction, splits
    )
    return out, grad


def assert_exact(scores, target, k, tau, alpha, splits=1, device="cpu"):
    """Loss and gradient within the float32 targets of the log-space reference."""
    scores = scores.float()
    ref_loss, ref_grad = log_space_loss_and_grad(scores.double(), target, k, tau, alpha)
    out, grad = run(scores.to(device), target.to(device), k, tau, alpha, splits=splits)
    loss_error, grad_error, non_finite = _errors(
        scores.double(),
        target,
        k,
        tau,
        alpha,
        torch.float32,
        out.double().cpu(),
        grad.double().cpu(),
        ref_loss,
        ref_grad,
    )
    assert non_finite == 0
    assert loss_error <= LOSS_BOUND, (k, tau, alpha, loss_error)
    assert grad_error <= GRAD_BOUND, (k, tau, alpha, grad_error)
    return loss_error, grad_error


@interpreted
@pytest.mark.parametrize("k", range(1, 33))
def test_every_k(k):
    """One row per k (the interpreter's cost is per row): target first or last, by parity."""
    generator = torch.Generator().manual_seed(k)
    n = k + 1 + k % 5
    scores = torch.randn(1, n, generator=generator) * 3
    target = torch.tensor([0 if k % 2 else n - 1])
    assert_exact(scores, target, k, tau=0.5 if k % 2 else 2.0, alpha=1.0)


@interpreted
def test_chunked_and_split_rows():
    """Rows of several chunks, and rows shared by several programs, as exact as one chunk."""
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 3000, generator=generator) * 4
    scores[1, :40] = scores[1].max() + 1.0  # ties at the anchor across segments
    scores[2, 2000:] = -math.inf
    target = torch.tensor([5, 2999, 1234])
    assert triton_kernel.block_size(3000, 5) < 3000
    single = assert_exact(scores, target, 5, 0.3, 1.0)
    split = assert_exact(scores, target, 5, 0.3, 1.0, splits=3)
    assert max(single + split) < 1e-6


@interpreted
@pytest.mark.parametrize("tau", [1e-3, 0.3, 20.0])
def test_the_float32_exponential_is_as_exact_as_the_float64_one(tau, monkeypatch):
    """The streaming passes form ``u_j`` in float32 (``wide`` is False at these tau): within
    the float32 targets of the log-space reference, one program per row and split rows, as the
    float64 form (forced) is."""
    generator = torch.Generator().manual_seed(int(tau * 1000))
    scores = torch.randn(3, 300, generator=generator) * 5
    scores[1, :10] = scores[1].max()  # ties at the anchor
    target = torch.tensor([0, 150, 299])
    assert not triton_kernel.wide(5, tau)
    narrow = [assert_exact(scores, target, 5, tau, 1.0, splits=s) for s in (1, 2)]
    monkeypatch.setattr(triton_kernel, "wide", lambda k, tau: True)
    wide = [assert_exact(scores, target, 5, tau, 1.0, splits=s) for s in (1, 2)]
    print(f"tau={tau}: float32 exponential {narrow}, float64 {wide}")


def test_the_exponential_is_wide_exactly_outside_the_float_scale():
    """float64 when ``1 / (k tau)`` leaves ``[1e-36, max float32]`` (the CPU kernel's rule)."""
    largest = torch.finfo(torch.float32).max
    for k, tau in [(1, 1.0), (5, 1e-3), (32, 1e-30), (1, 1e30), (5, 1e-37)]:
        scale = 1.0 / (k * tau)
        assert triton_kernel.wide(k, tau) == (not 1e-36 <= scale <= largest), (k, tau)
    assert triton_kernel.wide(1, 1e-39) and triton_kernel.wide(1, 1e37)


@pytest.mark.parametrize("raw, expected", [(None, 2), ("1", 1), ("3", 3), (" 2 ", 2)])
def test_pipeline_stages_from_the_environment(raw, expected, monkeypatch):
    """``SMOOTHTOPK_TRITON_STAGES``: the stages of the streaming loops, 2 unless set."""
    pytest.importorskip("triton")
    from smoothtopk.backends import triton_jit

    if raw is None:
        monkeypatch.delenv("SMOOTHTOPK_TRITON_STAGES", raising=False)
    else:
        monkeypatch.setenv("SMOOTHTOPK_TRITON_STAGES", raw)
    assert triton_jit._stages() == expected


@pytest.mark.parametrize("raw", ["0", "-1", "two", "", "1.5"])
def test_bad_pipeline_stages_raise(raw, monkeypatch):
    pytest.importorskip("triton")
    from smoothtopk.backends import triton_jit

    monkeypatch.setenv("SMOOTHTOPK_TRITON_STAGES", raw)
    with pytest.raises(ValueError, match="SMOOTHTOPK_TRITON_STAGES must be a positive integer"):
        triton_jit._stages()


@pytest.mark.parametrize("raw,k,classes,expected", [
    (None, 5, 1000, 512), ("128", 5, 1000, 128), ("128", 20, 1000, 128), ("16", 1, 1000, 16),
    ("1024", 1, 10**6, 1024), ("256", 5, 40, 64),
])  # fmt: skip
def test_the_chunk_size_cap_from_the_environment(raw, k, classes, expected, monkeypatch):
    if raw is None:
        monkeypatch.delenv(triton_kernel.MAX_BLOCK_ENV, raising=False)
    else:
        monkeypatch.setenv(triton_kernel.MAX_BLOCK_ENV, raw)
    assert triton_kernel.block_size(classes, k) == expected


@pytest.mark.parametrize("raw", ["0", "8", "100", "2048", "-64", "big", ""])
def test_a_bad_chunk_size_cap_raises(raw, monkeypatch):
    monkeypatch.setenv(triton_kernel.MAX_BLOCK_ENV, raw)
    with pytest.raises(ValueError, match="SMOOTHTOPK_TRITON_MAX_BLOCK must be a power of two"):
        triton_kernel.block_size(1000, 5)


@interpreted
@pytest.mark.parametrize("splits", [1, 2])
def test_small_capped_chunks_are_exact(splits, monkeypatch):
    """With the chunk size capped at 32 (``SMOOTHTOPK_TRITON_MAX_BLOCK``), a row of 300
    classes streams in ten chunks (and two segments of five): loss and gradient as the
    log-space reference."""
    monkeypatch.setenv(triton_kernel.MAX_BLOCK_ENV, "32")
    monkeypatch.setattr(triton_kernel, "_LAUNCHES", {})
    assert triton_kernel.block_size(300, 5) == 32
    generator = torch.Generator().manual_seed(16)
    scores = torch.randn(4, 300, generator=generator) * 3
    target = torch.tensor([0, 299, 150, 7])
    ref, ref_grad = _weighted_reference(scores, target, torch.ones(300), 5, 0.5, 1.0, "none")
    out, grad = run(scores, target, 5, 0.5, 1.0, splits=splits)
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


def _sum_by(summed_by: str, monkeypatch) -> list:
    """Sums by the kernel's last program or (``"torch"``) by torch after it: the launches set
    up afresh for the test; returns the list of torch's summing calls."""
    monkeypatch.setattr(triton_kernel, "_LAUNCHES", {})
    calls = []
    if summed_by == "torch":
        monkeypatch.setattr(triton_kernel, "KERNEL_SUM_ROWS", 1)
        sum_rows = triton_kernel._sum_rows
        monkeypatch.setattr(triton_kernel, "_sum_rows", lambda *a: calls.append(1) or sum_rows(*a))
    return calls


def _weighted_reference(scores, target, weight, k, tau, alpha, reduction):
    """F.cross_entropy's reductions of the log-space reference's rows (float64): weighted
    losses, ignored rows out, the mean over the kept rows' weight; and the gradient of it."""
    kept = target != -100
    safe = torch.where(kept, target, 0)
    loss, grad = log_space_loss_and_grad(scores.double(), safe, k, tau, alpha)
    w = torch.where(kept, weight.double()[safe], 0.0)
    losses, grads = w * loss, w[:, None] * grad
    if reduction == "none":
        return losses, grads
    if reduction == "sum":
        return losses.sum(), grads
    return losses.sum() / w.sum(), grads / w.sum()


@interpreted
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("summed_by,splits", [("kernel", 1), ("kernel", 2), ("torch", 1)])
def test_the_calls_end_reduces_as_cross_entropy(reduction, summed_by, splits, monkeypatch):
    """The forward kernel's last program (or torch's sums, beyond ``KERNEL_SUM_ROWS`` rows)
    reduces the weighted rows as F.cross_entropy does, ignored rows out; the backward reads
    the total weight it wrote."""
    calls = _sum_by(summed_by, monkeypatch)
    generator = torch.Generator().manual_seed(11)
    scores = torch.randn(5, 300, generator=generator) * 2
    target = torch.tensor([3, -100, 299, 0, 150])
    weight = torch.rand(300, generator=generator) + 0.5
    assert triton_kernel.block_size(300, 20) < 300  # several chunks: the split path applies
    ref, ref_grad = _weighted_reference(scores, target, weight, 20, 0.7, 1.0, reduction)
    out, grad = run(scores, target, 20, 0.7, 1.0, weight=weight, reduction=reduction,
                    splits=splits)  # fmt: skip
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
    assert (grad[target == -100] == 0).all()
    assert len(calls) == (summed_by == "torch" and reduction != "none")


@interpreted
@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_the_launches_of_cudas_common_kinds(reduction, splits, monkeypatch):
    """``_Launch`` as on CUDA (no host check; one program per row or split rows): weighted
    rows, an ignored one, a scalar margin and per-class margins, against the log-space
    reference and the PyTorch path in float64."""
    monkeypatch.setattr(triton_kernel, "_checks_on_host", lambda device: False)
    monkeypatch.setenv(triton_kernel.MAX_BLOCK_ENV, "16")  # chunks of 16: two segments of 32
    generator = torch.Generator().manual_seed(15)
    scores = torch.randn(5, 40, generator=generator) * 2
    target = torch.tensor([3, -100, 39, 0, 20])
    weight = torch.rand(40, generator=generator) + 0.5
    margins = torch.rand(40, generator=generator)
    launch = triton_kernel._Launch(scores, 3, 0.7, 1.0, reduction, (True, False), -100, splits)
    assert not launch.host_check and launch.split == (splits > 1)
    out, stats = launch.forward(scores, target, weight)
    grad = launch.backward(torch.ones_like(out), scores, target, stats)
    ref, ref_grad = _weighted_reference(scores, target, weight, 3, 0.7, 1.0, reduction)
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
    launch = triton_kernel._Launch(scores, 3, 0.7, 0.0, reduction, (True, True), -100, splits)
    out, stats = launch.forward(scores, target, weight, margins)
    grad = launch.backward(torch.ones_like(out), scores, target, stats)
    monkeypatch.setenv("SMOOTHTOPK_BACKEND", "pytorch")
    leaf = scores.double().requires_grad_()
    ref = smooth_topk_svm_loss(leaf, target, k=3, tau=0.7, alpha=margins.double(),
                               weight=weight.double(), reduction=reduction)  # fmt: skip
    (ref_grad,) = torch.autograd.grad(ref.sum(), leaf)
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


@interpreted
@pytest.mark.parametrize("summed_by", ["kernel", "torch"])
def test_every_row_ignored_and_no_rows(summed_by, monkeypatch):
    """F.cross_entropy's edge values: the mean of nothing is NaN (0 / 0), the sum 0, the
    gradient exactly 0; no rows at all give the same values without a launch."""
    _sum_by(summed_by, monkeypatch)
    scores = torch.randn(3, 20, generator=torch.Generator().manual_seed(12))
    ignored = torch.full((3,), -100)
    for rows in (scores, scores[:0]):
        target = ignored[: rows.shape[0]]
        for reduction, expected in (("mean", "nan"), ("sum", 0.0)):
            out, grad = run(rows, target, 2, reduction=reduction)
            reference = torch.nn.functional.cross_entropy(rows, target, reduction=reduction)
            assert torch.isnan(out) if expected == "nan" else out.item() == expected
            assert torch.isnan(reference) if expected == "nan" else reference.item() == expected
            assert grad.shape == rows.shape and (grad == 0).all()


@interpreted
@pytest.mark.parametrize("summed_by", ["kernel", "torch"])
@pytest.mark.parametrize("bad", [20, -1, -101])
def test_a_target_out_of_range_is_refused_on_cpu_tensors(summed_by, bad, monkeypatch):
    """CPU tensors (the interpreter, which compiles no device assertion): the targets are
    checked on the host before the launch, a ValueError naming the valid range as every CPU
    path's; ``ignore_index`` itself is not refused."""
    _sum_by(summed_by, monkeypatch)
    scores = torch.randn(4, 20, generator=torch.Generator().manual_seed(13))
    target = torch.tensor([1, -100, bad, 5])
    with pytest.raises(ValueError, match=r"target must be in \[0, 20\)"):
        run(scores, target, 2, reduction="mean")
    run(scores, torch.tensor([1, -100, 19, 5]), 2, reduction="mean")


@pytest.fixture
def kernel_asserts(monkeypatch):
    """The interpreter compiled as a GPU launch with :data:`ASSERTING` (``debug=True``) is:
    ``tl.device_assert`` active (the interpreter ignores a launch's options), the host check
    off, so that only the kernel answers."""
    from triton.runtime import interpreter

    options = interpreter.InterpreterOptions(**triton_kernel.ASSERTING)
    monkeypatch.setattr(interpreter.interpreter_builder, "options", options)
    monkeypatch.setattr(triton_kernel, "_checks_on_host", lambda device: False)
    monkeypatch.setattr(triton_kernel, "_LAUNCHES", {})


@interpreted
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("bad", [-1, 40, 10**6])
def test_the_kernel_asserts_a_target_out_of_range(bad, splits, kernel_asserts):
    """The forward kernels check the targets themselves (a device assertion, as
    F.cross_entropy's kernels: no check kernel before or after; issue #20), whether a row is
    computed by one program or split; ``ignore_index`` stays allowed."""
    scores = torch.randn(3, 40)
    with pytest.raises(Exception, match=r"target must be in \[0, n_classes\)") as raised:
        run(scores, torch.tensor([1, bad, -100]), 2, splits=splits)
    assert "AssertionError" in repr(raised.value)
    out, grad = run(scores, torch.tensor([1, 39, -100]), 2, splits=splits)  # all allowed
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    generator = torch.Generator().manual_seed(4)
    scores = (torch.randn(4, 50, generator=generator) * 2).to(dtype)
    target = torch.tensor([0, 7, 49, 20])
    ref_loss, ref_grad = log_space_loss_and_grad(scores.double(), target, 3, 1.0, 1.0)
    out, grad = run(scores, target, 3)
    assert out.dtype == torch.float32 and grad.dtype == dtype
    assert torch.allclose(out.double(), ref_loss, rtol=1e-6, atol=1e-6)
    eps = torch.finfo(dtype).eps
    assert (grad.double() - ref_grad).abs().max() <= eps * ref_grad.abs().max()


@interpreted
def test_operators_trace_with_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        scores, target = torch.empty(4, 10), torch.zeros(4, dtype=torch.int64)
        out, stats = triton_kernel.triton_forward(
            scores, target, None, -100, 3, 1.0, 1.0, "mean", None, 1
        )
        grad = triton_kernel.triton_backward(out, scores, target, stats, -100, 3, 1.0, "mean", 1)
    assert out.shape == () and stats.shape == (5, 13)
    assert grad.shape == scores.shape and grad.dtype == scores.dtype


def test_unavailable_reasons(monkeypatch):
    assert "float64" in triton_kernel.unavailable(torch.zeros(2, 5, dtype=torch.float64), 2)
    assert "k=33" in triton_kernel.unavailable(torch.zeros(2, 50), 33)
    if not INTERPRETING:
        assert "TRITON_INTERPRET" in triton_kernel.unavailable(torch.zeros(2, 5), 2)
    else:
        assert triton_kernel.unavailable(torch.zeros(2, 5), 2) is None


def test_import_does_not_import_triton():
    code = "import sys, smoothtopk.backends.triton; assert 'triton' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(Path(triton_kernel.__file__).parents[2]))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def _resources(compiled) -> tuple[int, int]:
    """``(registers, spilled bytes)`` of a cubin, by Triton's bundled cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(compiled.asm["cubin"])
        handle.flush()
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        text = subprocess.run(
            [str(tool), "--dump-resource-usage", handle.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    fields = dict(item.split(":") for item in text.split() if ":" in item and item[0].isupper())
    return int(fields["REG"]), int(fields["STACK"]) + int(fields["LOCAL"])


SIGNATURE = dict(
    s_ptr="*fp32",
    target_ptr="*i64",
    weight_ptr="*fp32",
    alpha_ptr="*fp32",
    stats_ptr="*fp64",
    n="i32",
    ignore_index="i32",
    tau="fp64",
    alpha="fp64",
    scale="fp64",
    reduction="i32",
    sums="i32",
    grad_ptr="*fp32",
    out_ptr="*fp32",
    seg="i32",
    splits="i32",
    work_ptr="*fp64",
)


@pytest.mark.skipif(INTERPRETING, reason="compiles")
@pytest.mark.parametrize(
    "name,k,wide",
    [("forward_row_kernel", 5, False), ("forward_row_kernel", 5, True),
     ("backward_kernel", 5, False), ("backward_kernel", 32, False)],
)  # fmt: skip
def test_compiles_for_sm90(name, k, wide):
    kern = getattr(triton_kernel._kernels(), name)
    block = triton_kernel.block_size(10**6, k)
    constexprs = dict(K=k, KP=triton_kernel._padded_k(k), BLOCK=block, WIDE=wide)
    constexprs.update(
        dict(HAS_WEIGHT=True, HAS_ALPHA=True, LOG=block.bit_length() - 1)
        if name.startswith("forward")
        else dict(REDUCTION=2)
    )
    spilled = _compile_for_sm90(kern, SIGNATURE, constexprs, f"{name} k={k} BLOCK={block}")
    assert spilled == 0  # measured: none at these configurations (k=32 forward: 128 bytes)


@pytest.mark.skipif(INTERPRETING, reason="compiles")
@pytest.mark.parametrize("k", [5, 20])
def test_the_split_rows_kernels_compile_for_sm90(k):
    """The four forward kernels of split rows (their workspaces, ``_split_buffers``; the
    finish kernel's end of the call), as the launcher gives them 33 segments. ``make
    test-floor`` runs these compiles with the GPU machine's Triton (3.6) too."""
    kernels = triton_kernel._kernels()
    kp, block = triton_kernel._padded_k(k), triton_kernel.block_size(10**6, k)
    shapes = dict(K=k, KP=kp)
    for name, constexprs in (
        ("top_segment_kernel", dict(shapes, BLOCK=block)),
        ("select_kernel", dict(shapes, CANDIDATES=triton_kernel._pow2(33 * kp))),
        ("rest_segment_kernel", dict(shapes, BLOCK=block, LOG=block.bit_length() - 1, WIDE=False)),
        ("finish_kernel", dict(shapes, HAS_WEIGHT=True, HAS_ALPHA=True, SP=64, LOG=6)),
    ):
        _compile_for_sm90(getattr(kernels, name), SIGNATURE, constexprs, f"{name} k={k}")


#: the kernels that read the targets for the loss, and assert them (``triton.ASSERTING``)
ASSERTING_KERNELS = {"forward_row_kernel", "finish_kernel"}


def _compile_for_sm90(kern, signature: dict, constexprs: dict, what: str) -> int:
    """Compile ``kern`` for sm_90 without a GPU, with the launch options the backend gives it;
    check its registers, its 64-bit row offsets and that the target-reading kernels assert in
    the PTX (a call of ``__assertfail`` with the message); return the bytes it spills (printed
    with its registers)."""
    from triton.backends.compiler import GPUTarget

    asserting = kern.__name__ in ASSERTING_KERNELS
    options = triton_kernel.ASSERTING if asserting else {}
    signature = {a: signature.get(a, "constexpr") for a in kern.arg_names}
    source = triton.compiler.ASTSource(fn=kern, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    registers, spilled = _resources(compiled)
    print(f"{what}: {registers} registers, {spilled} bytes spilled")
    assert 0 < registers <= 255
    _assert_64_bit_offsets(compiled.asm["ttir"])
    ptx = compiled.asm["ptx"]
    assert ("call.uni __assertfail" in ptx) == asserting, what
    assert (_ptx_string("target must be in [0, n_classes)") in ptx) == asserting, what
    return spilled


def _ptx_string(text: str) -> str:
    """``text`` as the PTX writes a constant string: its bytes in decimal, comma-separated."""
    return ", ".join(str(byte) for byte in text.encode())


#: the every-class kernel's arguments (margins in float64, as the operator passes them)
EVERY_CLASS_SIGNATURE = dict(SIGNATURE, beta_ptr="*fp32", alpha_ptr="*fp64", exp_alpha_ptr="*fp64",
                             out_ptr="*fp32", grad_ptr="*fp32")  # fmt: skip


@pytest.mark.skipif(INTERPRETING, reason="compiles")
@pytest.mark.parametrize("k", [5, 32])
def test_every_class_kernel_compiles_for_sm90(k):
    """The probability-target kernel, with margins and the gradient. Measured (4 warps):
    k=5 236 registers, none spilled; k=32 255 registers, 1632 bytes spilled (not yet located;
    its per-row part holds several 64 x 64 float64 tiles)."""
    kern = triton_kernel._every_class_kernels().every_class_kernel
    block = triton_kernel.block_size(10**6, k)
    constexprs = dict(K=k, KP=triton_kernel._padded_k(k), BLOCK=block, LOG=block.bit_length() - 1,
                      TILE=triton_kernel.class_tile(k), HAS_ALPHA=True, WITH_GRAD=True)  # fmt: skip
    what = f"every_class_kernel k={k} BLOCK={block}"
    spilled = _compile_for_sm90(kern, EVERY_CLASS_SIGNATURE, constexprs, what)
    if k <= 5:
        assert spilled == 0


# the arguments indexed by row (weight_ptr and alpha_ptr are indexed by class, below 2^31)
ROW_POINTERS = {"s_ptr", "target_ptr", "stats_ptr", "grad_ptr", "out_ptr", "beta_ptr", "work_ptr"}


def _assert_64_bit_offsets(ttir: str) -> None:
    """Every non-constant offset added to a per-row argument is 64-bit: offsets such as
    ``row * (2 + 2k)`` pass 2^31 at about 179 M rows (k = 5), reachable per pixel."""
    moves = re.findall(r"tt\.addptr %(\w+), %(\w+) : !tt\.ptr<\w+>, (i\d+)", ttir)
    checked = [(base, offset, bits) for base, offset, bits in moves if base in ROW_POINTERS]
    assert checked, "no pointer argument is offset"
    narrow = [m for m in checked if m[2] != "i64" and not re.fullmatch(r"c\d+_i\d+", m[1])]
    assert not narrow, narrow


@cuda
@pytest.mark.parametrize("n,k,tau,alpha", list(cells()))
def test_cuda_exactness_grid(n, k, tau, alpha):
    scores, targets = grid_inputs(n, k)
    assert_exact(scores, targets, k, tau, alpha, device="cuda")


@cuda
@pytest.mark.parametrize("rows,classes,splits", [(2048, 1000, 1), (200, 20_000, 4)])
def test_cuda_last_program_sums_every_row(rows, classes, splits):
    """On a GPU, where the programs run concurrently: the last program's sums (``_end_call``)
    see every row that the other programs wrote (the release/acquire of the counter), and are
    the same bits call after call (a fixed order, whichever program is last). At the most rows
    it sums, and with split rows (the finish kernel ends the call)."""
    generator = torch.Generator().manual_seed(14)
    scores = (torch.randn(rows, classes, generator=generator) * 3).cuda()
    target = torch.randint(0, classes, (rows,), generator=generator).cuda()
    target[::5] = -100
    assert rows <= triton_kernel.KERNEL_SUM_ROWS
    outs = []
    for _ in range(50):
        out, stats = triton_kernel.triton_forward(
            scores, target, None, -100, 5, 1.0, 1.0, "mean", None, splits
        )
        outs.append(out)
        losses, weights = stats[:-1, 2 + 2 * 5], stats[:-1, 3 + 2 * 5]
        total = stats[-1, 0]
        assert torch.allclose(total, weights.sum(), rtol=1e-12, atol=0)
        assert torch.allclose(out.double(), losses.sum() / weights.sum(), rtol=2e-7, atol=0)
    assert len({o.item() for o in outs}) == 1


#: a bad target on CUDA, in a process of its own (a device assertion ends the CUDA context)
BAD_TARGET_ON_CUDA = """
import torch
from smoothtopk.backends import triton
scores = torch.randn(8, 1000, device="cuda")
target = torch.randint(0, 1000, (8,), device="cuda")
target[3] = {bad}
out, stats = triton.triton_forward(scores, target, None, -100, 5, 1.0, 1.0, "mean", None, {splits})
torch.cuda.synchronize()
print("no assertion")
"""


@cuda
@pytest.mark.parametrize("bad,splits", [(1000, 1), (-1, 1), (1000, 4)])
def test_cuda_a_bad_target_trips_the_device_assertion(bad, splits):
    """On a GPU the kernel itself refuses the target, as F.cross_entropy's kernels do: the
    process sees CUDA's device-side assertion, and the kernel's message is printed."""
    code = BAD_TARGET_ON_CUDA.format(bad=bad, splits=splits)
    source = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)  # fmt: skip
    assert result.returncode != 0 and "no assertion" not in result.stdout
    assert "device-side assert" in result.stderr
    assert "target must be in [0, n_classes)" in result.stderr + result.stdout


@cuda
def test_cuda_launches_switch_to_the_scores_device_only_when_needed():
    """``_elsewhere``: no switch for the current device (the common case), a switch for
    another one; and launches for a non-current device compute there."""
    current = torch.cuda.current_device()
    assert not triton_kernel._elsewhere(torch.device("cuda", current))
    if torch.cuda.device_count() > 1:
        other = torch.device("cuda", (current + 1) % torch.cuda.device_count())
        assert triton_kernel._elsewhere(other)
        scores = torch.randn(4, 100, device=other)
        target = torch.randint(0, 100, (4,), device=other)
        out, saved = triton_kernel.forward(scores, target, None, -100, 5, 1.0, 1.0, "mean")
        grad = triton_kernel.backward(torch.ones_like(out), scores, target, None, -100, saved,
                                      5, 1.0, 1.0, "mean")  # fmt: skip
        leaf = scores.cpu().double().requires_grad_()
        reference = smooth_topk_svm_loss(leaf, target.cpu(), k=5)
        reference.backward()
        assert torch.allclose(out.cpu().double(), reference, rtol=1e-5)
        assert torch.allclose(grad.cpu().double(), leaf.grad, rtol=1e-4, atol=1e-7)
        assert torch.cuda.current_device() == current


def test_launches_switch_to_the_scores_device_only_when_needed(monkeypatch):
    """``_elsewhere`` without a GPU (the current CUDA device stubbed): no switch for CPU
    tensors or the current device, one for another CUDA device."""
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 1)
    assert not triton_kernel._elsewhere(torch.device("cpu"))
    assert not triton_kernel._elsewhere(torch.device("cuda", 1))
    assert triton_kernel._elsewhere(torch.device("cuda", 0))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_pytorch_float64(dtype, monkeypatch):
    monkeypatch.setenv("SMOOTHTOPK_BACKEND", "pytorch")
    generator = torch.Generator().manual_seed(6)
    scores = (torch.randn(64, 1000, generator=generator) * 3).to(dtype)
    target = torch.randint(0, 1000, (64,), generator=generator)
    target[::7] = -100
    weight = torch.rand(1000, generator=generator) + 0.5
    leaf = scores.double().requires_grad_(True)
    expected = smooth_topk_svm_loss(leaf, target, k=5, weight=weight.double())
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    out, grad = run(scores.cuda(), target.cuda(), 5, weight=weight.cuda(), reduction="mean")
    assert torch.allclose(out.double().cpu(), expected, rtol=1e-6)
    tolerance = torch.finfo(dtype).eps * expected_grad.abs().max()
    assert (grad.double().cpu() - expected_grad).abs().max() <= tolerance


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_every_class_matches_pytorch_float64(dtype):
    """Probability targets: the every-class kernel's loss and gradient on the GPU against the
    PyTorch operations in float64 (ties, a -inf class, per-class margins)."""
    from smoothtopk.backends import every_class

    generator = torch.Generator().manual_seed(8)
    scores = (torch.randn(64, 1000, generator=generator) * 3).to(dtype)
    scores[0, :10] = scores[0].max()
    scores[1, 5] = -math.inf
    beta = torch.rand(64, 1000, generator=generator).softmax(dim=1)
    margins = torch.rand(1000, generator=generator, dtype=torch.float64)
    leaf = scores.double().requires_grad_(True)
    expected = every_class.expected(leaf, beta.double(), 5, 0.5, margins)
    (expected_grad,) = torch.autograd.grad(expected.sum(), leaf)
    out, grad = triton_kernel.triton_every_class(
        scores.cuda(), beta.cuda(), 5, 0.5, 0.0, margins.cuda(), True
    )
    assert out.dtype == torch.float32 and grad.dtype == dtype
    assert torch.allclose(out.double().cpu(), expected, rtol=1e-6)
    tolerance = torch.finfo(dtype).eps * expected_grad.abs().max()
    assert (grad.double().cpu() - expected_grad).abs().max() <= tolerance


@cuda
def test_cuda_million_classes():
    generator = torch.Generator().manual_seed(7)
    scores = torch.randn(8, 10**6, generator=generator)
    target = torch.randint(0, 10**6, (8,), generator=generator)
    device = torch.empty(0, device="cuda")
    splits = triton_kernel.plan_splits(scores.to(device.device), 5)
    assert splits > 1
    single = run(scores.cuda(), target.cuda(), 5, splits=1)
    split = run(scores.cuda(), target.cuda(), 5, splits=splits)
    ref_loss, _ = log_space_loss_and_grad(scores[:1].double(), target[:1], 5, 1.0, 1.0)
    assert torch.allclose(single[0][:1].double().cpu(), ref_loss, rtol=1e-6)
    assert torch.allclose(single[0], split[0], rtol=1e-6)
    assert torch.allclose(single[1], split[1], rtol=1e-5, atol=1e-12)


@cuda
def test_cuda_compile_and_graph_capture():
    scores = torch.randn(32, 500, device="cuda")
    target = torch.randint(0, 500, (32,), device="cuda")

    def step(scores, target):
        out, saved = triton_kernel.forward(scores, target, None, -100, 5, 1.0, 1.0, "mean")
        grad = triton_kernel.backward(
            torch.ones_like(out), scores, target, None, -100, saved, 5, 1.0, 1.0, "mean"
        )
        return out, grad

    eager = step(scores, target)
    compiled = torch.compile(step, fullgraph=True)(scores, target)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
    step(scores, target)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(scores, target)
    scores.copy_(torch.randn_like(scores))
    graph.replay()
    fresh = step(scores, target)
    assert torch.equal(captured[0], fresh[0]) and torch.equal(captured[1], fresh[1])


@interpreted
def test_public_function_runs_the_triton_backend_when_forced(monkeypatch):
    """SMOOTHTOPK_BACKEND=triton on CPU tensors (interpreter) through the public function,
    double backward included (recomputed by the PyTorch path), against the PyTorch backend."""
    generator = torch.Generator().manual_seed(11)
    scores = torch.randn(5, 40, generator=generator)
    target = torch.tensor([0, 39, -100, 7, 7])
    weight = torch.rand(40, generator=generator) + 0.5
    results = {}
    for name in ("triton", "pytorch"):
        monkeypatch.setenv("SMOOTHTOPK_BACKEND", name)
        leaf = scores.clone().requires_grad_(True)
        value = smooth_topk_svm_loss(leaf, target, k=3, tau=0.5, weight=weight)
        (grad,) = torch.autograd.grad(value, leaf, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), leaf)
        value = smooth_topk_svm_loss(leaf, target, k=3, tau=0.5, weight=weight)
        (first_order,) = torch.autograd.grad(value, leaf)
        results[name] = (value, first_order, second)
    for ours, reference in zip(results["triton"], results["pytorch"], strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(INTERPRETING, reason="checks the declining, not the kernels")
def test_an_old_triton_is_declined_naming_both_versions(monkeypatch):
    assert triton_kernel.TRITON_VERSION == triton.__version__  # read without importing Triton
    scores, target = torch.zeros(2, 5), torch.tensor([0, 1])
    monkeypatch.setattr(triton_kernel, "TRITON_VERSION", "3.1.0")
    reason = triton_kernel.unavailable(scores, 2)
    assert "needs triton >= 3.2" in reason and "found triton 3.1.0" in reason
    monkeypatch.setenv("SMOOTHTOPK_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="SMOOTHTOPK_BACKEND=triton.*found triton 3.1.0"):
        smooth_topk_svm_loss(scores, target, k=2)
    monkeypatch.setattr(triton_kernel, "TRITON_VERSION", "3.2.0+git0")
    assert "found triton" not in triton_kernel.unavailable(scores, 2)  # the CPU reason instead


# --- auto's self-check of the Triton kernel (issue #19 item 5) ---------------------------------


@pytest.fixture
def auto_reaches_triton(monkeypatch):
    """:func:`backend_suite.auto_reaches_triton`, and the class-index checks made."""
    backend_suite.auto_reaches_triton(monkeypatch)
    calls = []
    real = triton_kernel._disagreement
    monkeypatch.setattr(
        triton_kernel, "_disagreement", lambda *a: calls.append(a[1:4:2]) or real(*a)
    )
    return calls


def _loss_and_grad(scores, target, **options):
    scores = scores.clone().requires_grad_()
    loss = smooth_topk_svm_loss(scores, target, **options)
    loss.backward()
    return loss.detach(), scores.grad


@interpreted
def test_auto_checks_the_kernel_once_per_kind_of_call(auto_reaches_triton):
    from smoothtopk import backends

    scores, target = torch.randn(12, 40) * 3, torch.randint(0, 40, (12,))
    call = (target, None, -100, 1.0, 1.0, "mean")
    assert backends.select(scores, 5, call).NAME == "triton"
    assert backends.select(scores, 5, call).NAME == "triton"
    assert len(auto_reaches_triton) == 1  # checked once for this kind
    backends.select(scores, 5, (target, torch.rand(40), -100, 1.0, 1.0, "mean"))
    backends.select(scores, 3, call)
    assert len(auto_reaches_triton) == 3  # a weight, another k: other kinds, checked once each
    loss, grad = _loss_and_grad(scores, target, k=5)
    ref, ref_grad = log_space_loss_and_grad(scores.double(), target, 5, 1.0, 1.0)
    torch.testing.assert_close(loss.double(), ref.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad / 12, rtol=1e-4, atol=1e-6)


@interpreted
def test_a_kernel_that_disagrees_is_not_used_by_auto(auto_reaches_triton, monkeypatch):
    from smoothtopk import backends

    real = triton_kernel._triton_forward

    def wrong(*args):  # a kernel whose losses are 5 % off, as a miscompiled one could be
        out, *rest = real(*args)
        return (out * 1.05, *rest)

    # the implementation, which eager calls run without the dispatcher (backends._abi.direct)
    monkeypatch.setattr(triton_kernel, "_triton_forward", wrong)
    scores, target = torch.randn(6, 30) * 2, torch.randint(0, 30, (6,))
    with pytest.warns(RuntimeWarning, match="disagreed with the PyTorch path") as seen:
        loss, _ = _loss_and_grad(scores, target, k=2)
    assert len(seen) == 1 and "SMOOTHTOPK_BACKEND=triton" in str(seen[0].message)
    assert seen[0].filename == __file__  # at the user's line
    call = (target, None, -100, 1.0, 1.0, "mean")
    assert backends.select(scores, 2, call).NAME == "pytorch"  # and no second warning
    expected = log_space_loss_and_grad(scores.double(), target, 2, 1.0, 1.0)[0].mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-7)
    monkeypatch.setenv(backends.ENV, "triton")  # forced: the kernel as it is, no check
    forced, _ = _loss_and_grad(scores, target, k=2)
    torch.testing.assert_close(forced.double(), expected * 1.05, rtol=1e-5, atol=1e-6)


@interpreted
def test_a_compile_before_any_eager_call_takes_the_pytorch_path(auto_reaches_triton):
    """A trace cannot run the check: an unchecked kind compiles on the PyTorch path; once an
    eager call has checked it, a new compile uses the kernel."""
    scores, target = torch.randn(4, 30), torch.randint(0, 30, (4,))
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append({str(node.target) for node in graph_module.graph.nodes})
        return graph_module.forward

    def step(x, y):
        return smooth_topk_svm_loss(x, y, k=5)

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=record, fullgraph=True)(scores, target)
    assert graphs and not any("triton_forward" in str(graph) for graph in graphs)
    assert auto_reaches_triton == []
    step(scores, target)  # eager: checks this kind
    torch._dynamo.reset()
    graphs.clear()
    again = torch.compile(step, backend=record, fullgraph=True)(scores, target)
    assert any("smoothtopk.triton_forward.default" in graph for graph in graphs)
    torch.testing.assert_close(compiled, again, rtol=1e-5, atol=1e-6)


@interpreted
def test_a_compiled_call_with_a_bad_target_is_refused(monkeypatch):
    """Under torch.compile the operator's implementation runs at run time: on CPU tensors its
    host check answers (on CUDA the kernel's assertion)."""
    monkeypatch.setenv("SMOOTHTOPK_BACKEND", "triton")
    torch._dynamo.reset()
    step = torch.compile(lambda s, t: smooth_topk_svm_loss(s, t, k=2), fullgraph=True,
                         backend="aot_eager")  # fmt: skip
    with pytest.raises(ValueError, match="target must be in"):
        step(torch.randn(3, 10), torch.tensor([1, 10, 2]))
