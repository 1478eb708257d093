"""Per-class margins (``alpha`` a ``(C,)`` tensor) and :func:`smoothtopk.ldam_margins`.

Evidence: a call with per-class margins equals one scalar-``alpha`` call per row (values and
gradients) on every backend, and the extended-precision references of ``reference.py`` with
``alpha[target_i]`` per row. The smooth loss runs on every backend (``every_backend``); the
Triton backend in Triton's interpreter (the ``interpreted`` tests, in the pytest session with
``TRITON_INTERPRET=1`` that ``make test`` starts), in float32 where the others run float64.
"""

import math
import os

import pytest
import torch

from backend_suite import only_some_when_interpreted, precise_dtype, require
from exactness_grid import BOUNDS
from reference import brute_force_loss, hard_loss, log_space_loss_and_grad
from smoothtopk import (
    SmoothTopkSVMLoss,
    TopkSVMLoss,
    ldam_margins,
    smooth_topk_svm_loss,
    topk_svm_loss,
)

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.interpreted  # run by make test's interpreter session (conftest.py)
on_cpu = pytest.mark.skipif(INTERPRETING, reason="the CPU suite runs outside the interpreter")
C = 7
TARGET = torch.tensor([0, 3, 6, -100, 3, 2, 5, 1])
MARGINS = torch.tensor([0.0, 0.25, 1.0, 2.5, 0.5, 1e-3, 4.0], dtype=torch.float64)


def _scores(dtype=torch.float64, rows=8, classes=C, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 2).to(dtype)


def _value_and_grad(loss, scores, target, grad_out=None, **options):
    """``(out, d<out, grad_out>/dscores)`` of one call (``grad_out`` defaults to ones)."""
    leaf = scores.clone().requires_grad_(True)
    out = loss(leaf, target, **options)
    grad_out = torch.ones_like(out) if grad_out is None else grad_out
    (grad,) = torch.autograd.grad(out, leaf, grad_out)
    return out.detach(), grad


def _per_row(loss, scores, target, margins, **options):
    """One call per row with the scalar margin ``alpha = margins[target_i]`` (0 if ignored):
    the rows' unweighted losses ``(M,)`` and their gradients ``(M, C)``."""
    values, grads = [], []
    for i, t in enumerate(target.tolist()):
        alpha = float(margins[t]) if t != -100 else 0.0
        value, grad = _value_and_grad(
            loss, scores[i : i + 1], target[i : i + 1], alpha=alpha, reduction="none", **options
        )
        values.append(value[0])
        grads.append(grad[0])
    return torch.stack(values), torch.stack(grads)


def _check_against_rows(loss, scores, target, margins, reduction, weight, tolerance, **options):
    """Per-class margins against scalar calls row by row, composed by ``reduction`` with the
    class weights: value and gradient."""
    rows, row_grads = _per_row(loss, scores, target, margins, **options)
    valid = target != -100
    w = torch.where(valid, weight.double()[target.clamp_min(0)], 0.0)
    generator = torch.Generator().manual_seed(1)
    if reduction == "none":
        expected = (w * rows.double()).to(rows.dtype)
        grad_out = torch.rand(len(target), generator=generator, dtype=rows.dtype)
        scale = grad_out.double() * w
    else:
        total = (w * rows.double()).sum()
        expected = total if reduction == "sum" else total / w.sum()
        grad_out = None
        scale = w if reduction == "sum" else w / w.sum()
    out, grad = _value_and_grad(
        loss,
        scores,
        target,
        grad_out,
        alpha=margins.to(scores.dtype),
        weight=weight,
        reduction=reduction,
        **options,
    )
    torch.testing.assert_close(out.double(), expected.double(), **tolerance)
    expected_grad = scale[:, None] * row_grads.double()
    torch.testing.assert_close(grad.double(), expected_grad, **tolerance)


TIGHT = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=1e-6, atol=1e-7),
}


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_smooth_per_class_equals_per_row_scalar_calls(every_backend, reduction, dtype):
    require(every_backend, dtype)
    if reduction == "sum":
        only_some_when_interpreted(every_backend, "the reductions none and mean")
    weight = torch.linspace(0.5, 2.0, C, dtype=dtype)
    scores = _scores(dtype)
    options = dict(k=2, tau=0.5)
    _check_against_rows(
        smooth_topk_svm_loss, scores, TARGET, MARGINS, reduction, weight, TIGHT[dtype], **options
    )


def test_margins_of_another_dtype_and_strided(every_backend):
    """float64 margins with float32 scores, and margins that are a strided view, read as the
    same numbers (the fused kernel reads any floating dtype and stride)."""
    scores = _scores(torch.float32)
    strided = torch.stack([MARGINS, -MARGINS], dim=1)[:, 0]  # stride 2
    assert not strided.is_contiguous()
    expected = smooth_topk_svm_loss(scores, TARGET, k=2, alpha=MARGINS.float(), reduction="none")
    for margins in (MARGINS, strided):
        out = smooth_topk_svm_loss(scores, TARGET, k=2, alpha=margins, reduction="none")
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


@on_cpu
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_hard_per_class_equals_per_row_scalar_calls(reduction):
    weight = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    _check_against_rows(
        topk_svm_loss, _scores(), TARGET, MARGINS, reduction, weight, TIGHT[torch.float64], k=3
    )
    # and the sorting reference, row by row with alpha[target_i]
    scores = _scores()
    out = topk_svm_loss(scores, TARGET, k=3, alpha=MARGINS, reduction="none")
    for i, t in enumerate(TARGET.tolist()):
        expected = 0.0 if t == -100 else hard_loss(scores[i], t, 3, float(MARGINS[t]))
        assert math.isclose(float(out[i]), expected, rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("k, tau", [(1, 1.0), (3, 0.2), (5, 2.0)])
def test_smooth_per_class_against_extended_precision_reference(every_backend, k, tau):
    """Every row against the log-space reference (loss and gradient) and the brute force over
    k-subsets (loss), each with that row's margin ``alpha[target_i]``, within the bounds of
    docs/exactness.md for the backend's precise dtype (the references at its rounded scores)."""
    dtype = precise_dtype(every_backend)
    loss_bound, grad_bound = BOUNDS[dtype]
    scores, target = _scores(dtype), TARGET.clamp_min(0)
    loss, grad = _value_and_grad(
        smooth_topk_svm_loss,
        scores,
        target,
        alpha=MARGINS.to(dtype),
        k=k,
        tau=tau,
        reduction="none",
    )
    scores, loss, grad = scores.double(), loss.double(), grad.double()
    for i, t in enumerate(target.tolist()):
        margin = float(MARGINS.to(dtype)[t])
        ref_loss, ref_grad = log_space_loss_and_grad(
            scores[i : i + 1], target[i : i + 1], k, tau, margin
        )
        scale = tau + margin + float((scores[i].max() - scores[i, t]).abs()) / k
        assert abs(float(loss[i]) - float(ref_loss[0])) <= loss_bound * scale, (i, k, tau)
        assert (grad[i] - ref_grad[0]).abs().max() <= grad_bound * ref_grad[0].abs().max()
        brute = brute_force_loss(scores[i].tolist(), t, k, tau, margin)
        assert abs(float(loss[i]) - brute) <= loss_bound * scale


def test_double_backward_with_per_class_margins(every_backend):
    """gradgradcheck through the recorded PyTorch backward, and the Hessian-vector product
    equals the one of scalar calls row by row."""
    require(every_backend, torch.float64)  # finite differences need float64
    x = _scores(rows=4, classes=6).requires_grad_(True)
    target = torch.tensor([0, 5, 2, 5])
    margins = torch.tensor([0.3, 0.0, 1.5, 0.7, 0.1, 2.0], dtype=torch.float64)

    def f(scores):
        return smooth_topk_svm_loss(scores, target, k=2, tau=0.7, alpha=margins, reduction="sum")

    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)
    (grad,) = torch.autograd.grad(f(x), x, create_graph=True)
    (hvp,) = torch.autograd.grad(grad.square().sum(), x)
    for i in range(4):
        row = x[i : i + 1]
        value = smooth_topk_svm_loss(
            row, target[i : i + 1], k=2, tau=0.7, alpha=float(margins[target[i]]), reduction="sum"
        )
        (row_grad,) = torch.autograd.grad(value, row, create_graph=True)
        (row_hvp,) = torch.autograd.grad(row_grad.square().sum(), x)
        torch.testing.assert_close(hvp[i], row_hvp[i], rtol=1e-12, atol=1e-14)


def test_torch_compile_fullgraph_with_per_class_margins(every_backend):
    """Static shapes (dynamic shapes of the scalar call: test_api.py; margins change no shape)."""
    torch._dynamo.reset()  # the backend is read while tracing
    scores = _scores(torch.float32, rows=16, classes=C, seed=2)
    target = torch.randint(0, C, (16,), generator=torch.Generator().manual_seed(3))
    margins = MARGINS.float()

    def step(scores, target, margins):
        return smooth_topk_svm_loss(scores, target, k=3, tau=0.5, alpha=margins)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=False)
    value, grad = _value_and_grad(compiled, scores, target, margins=margins)
    expected, expected_grad = _value_and_grad(step, scores, target, margins=margins)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)
    # under compile the value checks are device assertions (no host read), still enforced
    with pytest.raises(RuntimeError, match="alpha"):
        compiled(scores, target, -margins - 1.0)


@on_cpu
def test_modules_store_the_margins_as_a_buffer():
    scores, margins = _scores(), MARGINS.float()
    criterion = SmoothTopkSVMLoss(k=2, tau=0.5, alpha=margins, reduction="sum")
    assert dict(criterion.named_buffers())["alpha"] is margins
    assert "alpha" in criterion.state_dict()
    assert (
        repr(criterion) == "SmoothTopkSVMLoss(k=2, tau=0.5, alpha=<(7,) tensor>, reduction='sum')"
    )
    criterion = criterion.double()  # buffers follow .to(): the margins are now float64
    assert criterion.alpha.dtype == torch.float64
    expected = smooth_topk_svm_loss(scores, TARGET, k=2, tau=0.5, alpha=MARGINS, reduction="sum")
    torch.testing.assert_close(criterion(scores, TARGET), expected, rtol=1e-12, atol=0.0)
    assert criterion.to("meta").alpha.device.type == "meta"  # and .to(device)
    hard = TopkSVMLoss(k=3, alpha=MARGINS)
    expected = topk_svm_loss(scores, TARGET, k=3, alpha=MARGINS)
    torch.testing.assert_close(hard(scores, TARGET), expected, rtol=0.0, atol=0.0)
    compiled = torch.compile(hard, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(scores, TARGET), expected)
    # a scalar margin stays a plain attribute
    assert SmoothTopkSVMLoss(alpha=0.5).alpha == 0.5
    assert "alpha" not in SmoothTopkSVMLoss(alpha=0.5).state_dict()


X = torch.randn(4, 6)
Y = torch.tensor([0, 1, 2, 3])
GOOD = torch.full((6,), 0.5)


def _with(**changes):
    values = GOOD.clone()
    for index, value in changes.items():
        values[int(index[1:])] = value
    return values


BAD_MARGINS = [
    ("wrong length", GOOD[:5], ValueError, r"alpha must be a number or a \(6,\) tensor"),
    ("two dimensions", GOOD[None, :], ValueError, "alpha must be a number or a"),
    ("integer dtype", torch.ones(6, dtype=torch.int64), TypeError, "alpha must be a floating"),
    ("negative", _with(c2=-0.5), ValueError, "got -0.5 for class 2"),
    ("NaN", _with(c4=math.nan), ValueError, "got nan for class 4"),
    ("inf", _with(c0=math.inf), ValueError, "got inf for class 0"),
    ("requires grad", GOOD.clone().requires_grad_(True), ValueError, "alpha must not require"),
    ("other device", GOOD.to("meta"), ValueError, "alpha is on meta"),
    ("a list", GOOD.tolist(), TypeError, "alpha must be a number or a tensor"),
]


@on_cpu
@pytest.mark.parametrize("loss", [smooth_topk_svm_loss, topk_svm_loss])
@pytest.mark.parametrize("name, alpha, error, text", BAD_MARGINS, ids=[c[0] for c in BAD_MARGINS])
def test_bad_per_class_margins(loss, name, alpha, error, text):
    with pytest.raises(error, match=text):
        loss(X, Y, k=2, alpha=alpha)


@on_cpu
@pytest.mark.parametrize("module", [SmoothTopkSVMLoss, TopkSVMLoss])
def test_modules_check_margins(module):
    with pytest.raises(TypeError, match="alpha must be a floating"):
        module(alpha=torch.ones(6, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"alpha must be a number or a \(C,\) tensor"):
        module(alpha=torch.ones(2, 3))
    with pytest.raises(ValueError, match="got -1.0 for class 1"):
        module(alpha=torch.tensor([0.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(6,\) tensor"):  # the length against C at the call
        module(k=2, alpha=torch.ones(5))(X, Y)


@on_cpu
def test_ldam_margins_formula_by_hand():
    # n^(-1/4) of 81, 16, 1 is 1/3, 1/2, 1: the rarest class gets max_margin
    torch.testing.assert_close(
        ldam_margins(torch.tensor([81, 16, 1]), max_margin=0.6),
        torch.tensor([0.2, 0.3, 0.6]),
        rtol=1e-7,
        atol=0.0,
    )
    # n^(-1/4) of 16 and 256 is 1/2 and 1/4; divided by the largest (1/2): 1 and 1/2
    margins = ldam_margins([16.0, 256.0, 16.0], dtype=torch.float64)
    assert margins.tolist() == [1.0, 0.5, 1.0]
    assert ldam_margins([5, 5], max_margin=0.0).tolist() == [0.0, 0.0]
    assert ldam_margins(torch.tensor([3.0, 7.0])).dtype == torch.get_default_dtype()


BAD_COUNTS = [
    ("zero count", lambda: ldam_margins([3, 0, 2]), ValueError, "got 0.0 for class 1"),
    ("negative", lambda: ldam_margins(torch.tensor([-1, 2])), ValueError, "class_counts"),
    ("NaN", lambda: ldam_margins([1.0, math.nan]), ValueError, "got nan for class 1"),
    ("2-D", lambda: ldam_margins(torch.ones(2, 2)), ValueError, "class_counts must be 1-D"),
    ("empty", lambda: ldam_margins([]), ValueError, "class_counts must be 1-D"),
    ("bool", lambda: ldam_margins(torch.tensor([True])), TypeError, "class_counts"),
    ("string", lambda: ldam_margins("10,20"), TypeError, "class_counts"),
    ("max < 0", lambda: ldam_margins([1, 2], max_margin=-1.0), ValueError, "max_margin"),
    ("max inf", lambda: ldam_margins([1, 2], max_margin=math.inf), ValueError, "max_margin"),
    ("int dtype", lambda: ldam_margins([1, 2], dtype=torch.int64), TypeError, "dtype"),
]


@on_cpu
@pytest.mark.parametrize("name, call, error, text", BAD_COUNTS, ids=[c[0] for c in BAD_COUNTS])
def test_bad_ldam_arguments(name, call, error, text):
    with pytest.raises(error, match=text):
        call()


@interpreted
def test_interpreted_triton_split_rows_against_reference():
    """Rows shared by several programs (the finish kernel reads the margins) against the
    log-space reference with ``alpha[target_i]``, and against the same rows unsplit."""
    from smoothtopk.backends import triton as triton_backend

    k, tau, classes = 20, 0.5, 400
    assert triton_backend.block_size(classes, k) < classes  # several chunks, so splits apply
    scores = _scores(torch.float32, rows=2, classes=classes, seed=5)
    target = torch.tensor([3, 398])
    margins = torch.rand(classes, generator=torch.Generator().manual_seed(6)) * 2
    outs = []
    for splits in (1, 3):
        out, stats = triton_backend.triton_forward(
            scores, target, None, -100, k, tau, 0.0, "none", margins, splits
        )
        grad = triton_backend.triton_backward(
            torch.ones_like(out),
            scores,
            target,
            stats,
            -100,
            k,
            tau,
            "none",
            splits,
        )
        outs.append((out, grad))
        for i, t in enumerate(target.tolist()):
            ref_loss, ref_grad = log_space_loss_and_grad(
                scores[i : i + 1].double(), target[i : i + 1], k, tau, float(margins[t])
            )
            assert abs(float(out[i]) - float(ref_loss[0])) <= 1e-5 * (1 + float(ref_loss[0]))
            assert (grad[i].double() - ref_grad[0]).abs().max() <= 1e-4 * ref_grad[0].abs().max()
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-6, atol=0.0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-9)
