"""The lean eager call path of the smooth loss (issue #20): a call of a kind already checked skips
the argument checks and the backend choice, and nothing else changes — the same numbers, the
same errors for every argument that was not part of the checked call, the same gradients
(first and second order) as the full path."""

import contextlib
import inspect
import os

import pytest
import torch

from memory_probe import OperatorNames
from smoothtopk import backends, smooth_topk, smooth_topk_svm_loss
from smoothtopk.backends import _abi


def _inputs(rows=6, classes=9, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, classes, generator=generator, dtype=dtype)
    return scores, torch.randint(0, classes, (rows,), generator=generator)


def _full_path(monkeypatch):
    """Calls of this test take the full path: no key, so no plan is used or kept."""
    monkeypatch.setattr(smooth_topk, "_plan_key", lambda *args: None)


def test_a_checked_kind_of_call_skips_the_checks_and_the_choice(every_backend, monkeypatch):
    scores, target = _inputs(dtype=torch.float32)
    chosen = []
    select = backends.select
    monkeypatch.setattr(backends, "select", lambda *a: chosen.append(1) or select(*a))
    smooth_topk_svm_loss(scores, target, k=3)
    smooth_topk_svm_loss(scores + 1.0, target.flip(0), k=3)  # the same kind, other values
    assert len(chosen) == 1
    smooth_topk_svm_loss(scores, target, k=2)  # another kind: checked and chosen again
    assert len(chosen) == 2


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(k=3.0), TypeError, "k must be an int"),
        (dict(k=True), TypeError, "k must be an int"),
        (dict(k=9), ValueError, "1 <= k < number of classes"),
        (dict(tau=float("nan")), ValueError, "tau must be finite"),
        (dict(tau=0.0), ValueError, "tau must be a finite number > 0"),
        (dict(alpha=-1.0), ValueError, "finite number >= 0"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(ignore_index=1.0), TypeError, "ignore_index must be an int"),
        (dict(label_smoothing=False), TypeError, "label_smoothing"),
        (dict(weight=torch.ones(8)), ValueError, "weight must have shape"),
        (dict(weight=torch.ones(9, requires_grad=True)), ValueError, "must not require grad"),
    ],
)
def test_arguments_outside_a_checked_call_are_still_refused(change, error, match, every_backend):
    """A valid call of the same shapes first, then one argument changed: the plan of the valid
    call must not let the bad one through (``k=3.0 == 3`` hashes alike: the types are part of
    the key)."""
    scores, target = _inputs(dtype=torch.float32)
    options = dict(k=3, tau=1.0, alpha=1.0, reduction="mean", ignore_index=-100)
    smooth_topk_svm_loss(scores, target, **options)
    with pytest.raises(error, match=match):
        smooth_topk_svm_loss(scores, target, **{**options, **change})


def test_target_values_are_checked_on_every_call(every_backend):
    """Target values are not part of a plan: an out-of-range class after a valid call of the
    same kind is refused (by the kernel or by the range check)."""
    scores, target = _inputs(dtype=torch.float32)
    smooth_topk_svm_loss(scores, target, k=3)
    bad = target.clone()
    bad[2] = 9
    # the CPU kernel and the host check raise the same error (Triton's interpreter checks CPU
    # tensors on the host; on CUDA its kernel asserts: tests/test_triton_kernel.py)
    for _ in range(2):
        with pytest.raises(ValueError, match=r"must be in \[0, 9\) or equal to ignore_index"):
            smooth_topk_svm_loss(scores, bad, k=3)


def test_the_backend_variable_is_read_at_every_call(monkeypatch):
    scores, target = _inputs()
    monkeypatch.setenv(backends.ENV, "pytorch")
    smooth_topk_svm_loss(scores, target, k=3)
    monkeypatch.setenv(backends.ENV, "no-such-backend")
    with pytest.raises(ValueError, match="SMOOTHTOPK_BACKEND must be one of"):
        smooth_topk_svm_loss(scores, target, k=3)
    monkeypatch.setenv(backends.ENV, "pytorch")
    monkeypatch.setenv(backends.RETIRED, "0")  # the retired switch is refused after a plan too
    with pytest.raises(ValueError, match="SMOOTHTOPK_CPU_KERNEL is retired"):
        smooth_topk_svm_loss(scores, target, k=3)


@pytest.mark.parametrize("mapping", ["os.environ", "a replaced os.environ"])
def test_the_setting_follows_the_environment(mapping, monkeypatch):
    # backends.setting reads os.environ's own dict; it must see every change made through
    # os.environ, and a replaced os.environ (a plain mapping) is read through it
    if mapping != "os.environ":
        monkeypatch.setattr(os, "environ", dict(os.environ))
    values = []
    for value in ("pytorch", "cpu", None):
        if value is None:
            monkeypatch.delenv(backends.ENV, raising=False)
        else:
            monkeypatch.setenv(backends.ENV, value)
        monkeypatch.setenv(backends.RETIRED, f"{value}-retired")
        values.append(backends.setting())
    decoded = [tuple(v.decode() if isinstance(v, bytes) else v for v in pair) for pair in values]
    assert decoded == [
        ("pytorch", "pytorch-retired"), ("cpu", "cpu-retired"), (None, "None-retired")
    ]  # fmt: skip


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, 9), (9,), (3, 9, 2, 2)])
def test_the_lean_path_equals_the_full_path(shape, reduction, every_backend, monkeypatch):
    """Values, gradients and second-order gradients (``create_graph``) of a planned call equal
    those of the full path, for 1-D, 2-D and spatial inputs, weights and ignored elements."""
    if every_backend == "triton" and (reduction != "mean" or len(shape) != 2):
        pytest.skip("Triton in the interpreter: one case")
    dtype = torch.float32 if every_backend == "triton" else torch.float64
    generator = torch.Generator().manual_seed(len(shape))
    scores = torch.randn(shape, generator=generator, dtype=dtype)
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    target = torch.randint(0, 9, target_shape, generator=generator)
    if target.dim() > 0:
        target.view(-1)[0] = -100
    weight = torch.rand(9, generator=generator, dtype=dtype) + 0.5
    options = dict(k=3, tau=0.5, alpha=1.0, weight=weight, reduction=reduction)

    def value_and_grads(s):
        s = s.clone().requires_grad_(True)
        out = smooth_topk_svm_loss(s, target, **options)
        (grad,) = torch.autograd.grad(out.sum(), s, create_graph=True)
        (second,) = torch.autograd.grad((grad * grad).sum(), s)
        return out.detach(), grad.detach(), second

    smooth_topk_svm_loss(scores, target, **options)  # the plan
    assert smooth_topk._PLANS, "the call was not planned"
    planned = value_and_grads(scores)
    smooth_topk.clear_plans()
    _full_path(monkeypatch)
    full = value_and_grads(scores)
    for a, b in zip(planned, full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_planned_call_keeps_the_input_dtype(dtype, monkeypatch):
    """A planned CPU call returns the loss in the input's dtype with the full path's value and
    gradient, whether the plan is the kernel's operator alone (float32) or converts after it."""
    scores, target = _inputs(dtype=dtype)

    def value_and_grad():
        s = scores.clone().requires_grad_(True)
        out = smooth_topk_svm_loss(s, target, k=3, reduction="none")
        out.sum().backward()
        return out.detach(), s.grad

    smooth_topk_svm_loss(scores, target, k=3, reduction="none")  # the plan
    assert smooth_topk._PLANS, "the call was not planned"
    planned = value_and_grad()
    smooth_topk.clear_plans()
    _full_path(monkeypatch)
    full = value_and_grad()
    assert planned[0].dtype == dtype and planned[1].dtype == dtype
    for a, b in zip(planned, full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_signature_shows_keyword_only_options():
    """The loss refuses extra positionals itself (no wrapper frame): its shown signature is
    ``(input, target, *, k, ...)``, with no ``*positional``."""
    parameters = inspect.signature(smooth_topk_svm_loss).parameters
    kinds = {name: p.kind for name, p in parameters.items()}
    assert list(kinds)[:2] == ["input", "target"]
    assert inspect.Parameter.VAR_POSITIONAL not in kinds.values()
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for kind in list(kinds.values())[2:])
    with pytest.raises(TypeError, match="got 2 more positional"):
        smooth_topk_svm_loss(*_inputs(), 3, 1.0)


def test_calls_that_are_not_planned(every_backend):
    """Per-class margins (read on the host), label smoothing, class probabilities, autocast and
    torch.func transforms take the full path: no plan is made for them."""
    scores, target = _inputs(dtype=torch.float32)
    probabilities = torch.softmax(torch.randn(6, 9), dim=1)
    smooth_topk_svm_loss(scores, target, k=3, alpha=torch.full((9,), 0.5))
    smooth_topk_svm_loss(scores, target, k=3, label_smoothing=0.1)
    smooth_topk_svm_loss(scores, probabilities, k=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        smooth_topk_svm_loss(scores, target, k=3)
    torch.func.grad(lambda s: smooth_topk_svm_loss(s, target, k=3))(scores)
    assert not smooth_topk._PLANS


def test_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(smooth_topk, "_MAX_PLANS", 3)
    for rows in range(1, 8):
        smooth_topk_svm_loss(*_inputs(rows=rows), k=2)
        assert 1 <= len(smooth_topk._PLANS) <= 3


def test_operators_are_called_directly_only_in_plain_eager_mode():
    """The Triton backend's implementations skip the dispatcher only for plain tensors outside
    traces and dispatch modes, which must see the operator."""
    from torch.utils._python_dispatch import TorchDispatchMode

    plain = torch.zeros(2, 3)
    assert _abi.direct(plain)

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Watch():
        assert not _abi.direct(plain)
    assert not _abi.direct(torch.nn.Parameter(plain))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_the_cpu_operator_is_differentiable_twice(reduction):
    """``smoothtopk::cpu_loss`` (autograd in C++): gradcheck and gradgradcheck in float64 with
    weights, an ignored row and per-class margins (the double backward is the PyTorch path's
    recorded recomputation)."""
    cpu = backends.module("cpu")
    if cpu.unavailable(torch.zeros(1, 4, dtype=torch.float64), 1) is not None:
        pytest.skip("the fused CPU kernel could not be built")
    scores, target = _inputs(rows=5, classes=7)
    target[1] = -100
    weight = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    margins = torch.linspace(0.0, 1.5, 7, dtype=torch.float64)
    for alpha in (0.7, margins):

        def loss(s, alpha=alpha):
            return cpu.loss(s, target, weight, -100, 3, 0.8, alpha, reduction)

        s = scores.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(loss, (s,))
        assert torch.autograd.gradgradcheck(loss, (s,))


def test_the_cpu_operator_in_inference_mode_and_without_grad():
    """Below autograd (inference mode) the operator's CPU kernel gives the value alone; with
    grad mode off no graph is made; both equal the differentiable call."""
    scores, target = _inputs()
    expected = smooth_topk_svm_loss(scores.clone().requires_grad_(True), target, k=3)
    with torch.inference_mode():
        inferred = smooth_topk_svm_loss(scores, target, k=3)
    with torch.no_grad():
        plain = smooth_topk_svm_loss(scores.clone().requires_grad_(True), target, k=3)
    assert plain.grad_fn is None and not plain.requires_grad
    torch.testing.assert_close(inferred, expected.detach(), rtol=0, atol=0)
    torch.testing.assert_close(plain, expected.detach(), rtol=0, atol=0)


def test_a_graph_through_the_lean_path_keeps_autograd_rules():
    """retain_graph accumulates a second backward; without it a second backward is refused;
    saved-tensor hooks (as activation offloading uses) see the saved tensors."""
    scores, target = _inputs()
    smooth_topk_svm_loss(scores, target, k=3)  # plan
    s = scores.clone().requires_grad_(True)
    packed = []

    def pack(tensor):
        packed.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = smooth_topk_svm_loss(s, target, k=3)
    assert torch.Size(scores.shape) in packed
    out.backward(retain_graph=True)
    once = s.grad.clone()
    out.backward()
    torch.testing.assert_close(s.grad, 2 * once)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("k,tau,reduction", [
    (1, 1.0, "mean"), (5, 1.0, "none"), (20, 0.5, "sum"), (5, 1e-40, "mean"),
])  # fmt: skip
def test_the_cpu_operators_node_gives_the_two_operators_gradient(dtype, k, tau, reduction):
    """``smoothtopk::cpu_loss``'s node keeps the forward's ``u_j`` and its backward reads them
    instead of forming them again: the same gradient, bit for bit, as ``cpu_forward`` then
    ``cpu_backward`` (which form them twice); over every dtype, chunks of 512 classes and a
    remainder, an ignored row, and tau = 1e-40 (``u_j`` formed in double: not kept)."""
    cpu = backends.module("cpu")
    if cpu.unavailable(torch.zeros(1, 4, dtype=dtype), 1) is not None:
        pytest.skip("the fused CPU kernel could not be built")
    scores, target = _inputs(rows=7, classes=1100, dtype=torch.float64, seed=3)
    scores = (scores * 3).to(dtype)
    target[2] = -100
    ops = torch.ops.smoothtopk
    arguments = (target, None, -100, k, tau, 1.0, reduction, None)
    leaf = scores.clone().requires_grad_(True)
    out = ops.cpu_loss(leaf, *arguments)
    grad_out = torch.rand_like(out) + 0.5
    (kept,) = torch.autograd.grad(out, leaf, grad_out)
    value, stats, anchors = ops.cpu_forward(scores, *arguments)
    formed = ops.cpu_backward(grad_out, scores, target, stats, anchors, -100, k, tau, reduction)
    assert torch.equal(out, value) and torch.equal(kept, formed)


def test_a_dispatch_mode_sees_the_cpu_operators_under_the_node():
    """``cpu_loss`` calls the kernels without the dispatcher only when nothing watches: under
    a dispatch mode its forward and backward go through ``cpu_forward`` and ``cpu_backward``,
    which the mode sees, and the gradient is the same."""
    cpu = backends.module("cpu")
    if cpu.unavailable(torch.zeros(1, 4), 1) is not None:
        pytest.skip("the fused CPU kernel could not be built")

    scores, target = _inputs(rows=5, classes=40, dtype=torch.float32)
    arguments = (target, None, -100, 3, 1.0, 1.0, "mean", None)
    grads = []
    for watched in (False, True):
        leaf = scores.clone().requires_grad_(True)
        with OperatorNames() if watched else contextlib.nullcontext() as watch:
            torch.ops.smoothtopk.cpu_loss(leaf, *arguments).backward()
        grads.append(leaf.grad)
    assert {"cpu_forward", "cpu_backward"} <= watch.names
    assert torch.equal(grads[0], grads[1])


def test_the_cpu_operators_node_refuses_scores_changed_in_place():
    """The backward node that ``smoothtopk::cpu_loss`` records (not a torch::autograd::Function,
    whose bookkeeping cost about 8 us per step) checks the saved scores' version: scores
    changed in place after the forward are refused at the backward. It is named after the
    loss."""
    scores, target = _inputs()
    smooth_topk_svm_loss(scores, target, k=3)  # plan
    s = scores.clone().requires_grad_(True)
    leaf = s * 1.0
    out = smooth_topk_svm_loss(leaf, target, k=3)
    assert out.grad_fn.name() == "SmoothTopkLossBackward"
    with torch.no_grad():
        leaf.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_through_the_lean_path(use_reentrant):
    """``torch.utils.checkpoint`` around the loss: the gradient equals the plain one. The
    non-reentrant form recomputes the forward from inside the backward node's unpacking of its
    saved tensors, which must therefore run above autograd (else the recomputation records no
    graph and saves nothing)."""
    from torch.utils.checkpoint import checkpoint

    scores, target = _inputs()
    smooth_topk_svm_loss(scores, target, k=3)  # plan

    def step(s):
        return smooth_topk_svm_loss(s * 2.0, target, k=3)

    grads = []
    for wrapped in (True, False):
        s = scores.clone().requires_grad_(True)
        out = checkpoint(step, s, use_reentrant=use_reentrant) if wrapped else step(s)
        out.backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script")  # torch's forward-AD import, not ours
@pytest.mark.parametrize("grad_mode", [True, False])
def test_forward_mode_ad_is_refused_not_dropped(grad_mode):
    # under a dual level the Function runs even when no backward is needed (no_grad), so that
    # a tangent is never silently lost: torch refuses it, as the Function has no jvp
    import torch.autograd.forward_ad as fwAD

    scores, target = _inputs()
    smooth_topk_svm_loss(scores, target, k=3)  # a plan for this kind of call
    with fwAD.dual_level(), torch.set_grad_enabled(grad_mode):
        dual = fwAD.make_dual(scores, torch.ones_like(scores))
        with pytest.raises(NotImplementedError, match="forward mode AD"):
            smooth_topk_svm_loss(dual, target, k=3)


@pytest.mark.interpreted
def test_the_prepared_triton_call_keeps_autograd_rules(monkeypatch):
    """A planned Triton call runs its prepared launches (``prepare``: no operator, no per-call
    launch arithmetic) through its own Function: the saved scores' version is checked, a
    dispatch mode still sees the operators, activation checkpointing gives the plain
    gradient."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setenv(backends.ENV, "triton")
    scores, target = _inputs(dtype=torch.float32)
    smooth_topk_svm_loss(scores, target, k=3)  # plan
    leaf = scores.clone().requires_grad_(True) * 1.0
    out = smooth_topk_svm_loss(leaf, target, k=3)
    assert out.grad_fn.name() == "_PreparedSmoothTopkSVMBackward"
    with torch.no_grad():
        leaf.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()

    with OperatorNames() as watch:
        smooth_topk_svm_loss(scores.clone().requires_grad_(True), target, k=3).backward()
    assert {"triton_forward", "triton_backward"} <= watch.names
    grads = []
    for wrapped in (True, False):
        s = scores.clone().requires_grad_(True)
        step = lambda x: smooth_topk_svm_loss(x * 2.0, target, k=3)  # noqa: E731
        (checkpoint(step, s, use_reentrant=False) if wrapped else step(s)).backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
