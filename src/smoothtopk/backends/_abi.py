r"""What the fused kernels share: their operators, the per-row layout and the overflow bound.

**Operators.** One namespace, ``smoothtopk``, one registration style: every schema is defined
here with ``torch.library.define`` and gets its fake (meta) implementation here, so that
``torch.compile``, ``FakeTensorMode`` and ``torch.export`` see every kernel the same way; a
backend only adds its device implementation (the CPU kernel from C++, the Triton kernel with
``torch.library.impl``). The two kernels take the same arguments in the same order; the Triton
operators add what their launch needs (``splits``), and their ``stats`` holds ``k + 2`` more
columns and a row (:func:`triton_stats_shape`: the rows' weighted losses, weights and anchors,
and the total weight that their backward reads; the CPU kernel folds it into the slopes)::

    smoothtopk::cpu_forward(scores, target, weight?, ignore_index, k, tau, alpha, reduction,
                            alpha_per_class?) -> (out, stats, anchor_index)
    smoothtopk::cpu_backward(grad_out, scores, target, stats, anchor_index, ignore_index, k,
                             tau, reduction) -> grad
    smoothtopk::cpu_loss(... as cpu_forward ...) -> out     # differentiable: autograd in C++
    smoothtopk::recorded_backward(grad_out, scores, target, weight?, ignore_index, k, tau,
                                  alpha, reduction, alpha_per_class?) -> grad
    smoothtopk::triton_forward(... as cpu_forward ..., splits) -> (out, stats)
    smoothtopk::triton_backward(... as cpu_backward but anchor_index ..., splits) -> grad
    smoothtopk::cpu_every_class(scores, beta, k, tau, alpha, alpha_per_class?, with_grad)
        -> (out, grad)      # sum_c beta_ic L(s_i, c) per row and, with with_grad, its gradient
    smoothtopk::triton_every_class(... as cpu_every_class ...) -> (out, grad)
    smoothtopk::vector_math(x, function) -> y   # csrc/vector_math.h's exp_nonpositive,
        # log_positive or log1p_nonnegative element by element: for tests of their ulp errors

``cpu_loss`` is ``cpu_forward``'s value with its autograd formula registered in C++
(``csrc/autograd_cpu.cpp``: ``cpu_backward``, or under ``create_graph`` ``recorded_backward``, the
PyTorch path's recomputation with recorded operations), so that an eager step runs no Python
after the call; the Triton operators' implementations are Python and are called directly in
plain eager mode (:func:`direct`). The every-class operators form the gradient in the forward;
one ``autograd.Function``, :func:`smoothtopk.backends.every_class.fused_expected`, serves
both.

**Per-row layout** of ``stats`` (float64, :func:`stats_width` ``= 2 + 2k`` columns)::

    [a, slope, D_0 .. D_{k-1}, G_0 .. G_{k-1}]

with ``a`` the anchor (the k-th largest non-target score), ``slope`` the row's
``weight[y] sigmoid(z'/tau) / k`` (times ``1 / sum w`` for the CPU kernel's mean), ``D_m`` the
coefficients of a rest class's gradient ``slope u_j sum_m (-u_j)^m D_m`` and ``G_i`` the anchors'
gradients; ``anchor_index (M, k)`` holds the anchors' classes (docs/algorithm.md). The C++ file
and the Triton kernels index it by these constants (the C++ file by the same numbers, tested
through the gradients of the backend contract suite).

**Overflow bound.** Both kernels sum products of numbers at most 1 in float64; with ``n``
classes a sum has at most ``(2n)^k`` terms, so it stays finite while ``k log(2n) <=``
:data:`MAX_LOG_TERM` (:func:`fits`). Beyond it, ``auto`` takes the PyTorch path.

Shape:
    scores ``(M, C)``, target ``(M,)``, weight and alpha_per_class ``(C,)``; out ``(M,)`` for
    ``"none"``, else ``()``; stats ``(M, 2 + 2k)``; anchor_index ``(M, k)``; grad ``(M, C)``.

Example:
    >>> import torch
    >>> from smoothtopk.backends import _abi
    >>> _abi.stats_width(5), _abi.fits(1000, 5), _abi.fits(10**6, 60)
    (12, True, False)
    >>> scores = torch.empty(3, 10, device="meta")
    >>> out, stats, anchors = torch.ops.smoothtopk.cpu_forward(
    ...     scores, torch.empty(3, dtype=torch.long, device="meta"), None, -100, 2, 1.0, 1.0,
    ...     "none", None)
    >>> tuple(out.shape), tuple(stats.shape), tuple(anchors.shape)
    ((3,), (3, 6), (3, 2))
"""

from __future__ import annotations

import math

import torch

from .._convention import working_dtype

NAMESPACE = "smoothtopk"
#: ``k log(2n)`` bound: every float64 sum of the kernels stays below ``e^700 < max double``
MAX_LOG_TERM = 700.0
#: the fused kernels form ``u_j = e^{(s_j - a) / (k tau)}`` of float32 (and narrower) scores in
#: float32 when ``1 / (k tau)`` lies in ``[MIN_FLOAT_SCALE, MAX_FLOAT]``, else in float64 (the C++
#: file's ``kMinFloatScale``, ``exponent_in_double``; the Triton backend's ``wide``)
MIN_FLOAT_SCALE, MAX_FLOAT = 1e-36, float(torch.finfo(torch.float32).max)
#: columns of a row of ``stats``: the anchor, the slope, the first of the ``k`` rest coefficients
ANCHOR, SLOPE, REST_COEFFICIENTS = 0, 1, 2

_FORWARD = (
    "Tensor scores, Tensor target, Tensor? weight, int ignore_index, int k, float tau, "
    "float alpha, str reduction, Tensor? alpha_per_class"
)
_BACKWARD = (
    "Tensor grad_out, Tensor scores, Tensor target, Tensor stats, Tensor anchor_index, "
    "int ignore_index, int k, float tau, str reduction"
)
#: ``_BACKWARD`` without ``anchor_index`` (the Triton operators keep the anchors in ``stats``)
_TRITON_BACKWARD = _BACKWARD.replace("Tensor anchor_index, ", "")
_EVERY_CLASS = (
    "(Tensor scores, Tensor beta, int k, float tau, float alpha, Tensor? alpha_per_class, "
    "bool with_grad)"
)
_RECORDED = (
    "Tensor grad_out, Tensor scores, Tensor target, Tensor? weight, int ignore_index, int k, "
    "float tau, float alpha, str reduction, Tensor? alpha_per_class"
)
SCHEMAS = {
    "cpu_forward": f"({_FORWARD}) -> (Tensor, Tensor, Tensor)",
    "cpu_loss": f"({_FORWARD}) -> Tensor",
    "cpu_backward": f"({_BACKWARD}) -> Tensor",
    "triton_forward": f"({_FORWARD}, int splits) -> (Tensor, Tensor)",
    "triton_backward": f"({_TRITON_BACKWARD}, int splits) -> Tensor",
    "cpu_every_class": f"{_EVERY_CLASS} -> (Tensor, Tensor)",
    "triton_every_class": f"{_EVERY_CLASS} -> (Tensor, Tensor)",
    "vector_math": "(Tensor x, str function) -> Tensor",
}


def stats_width(k: int) -> int:
    """Columns of a row of ``stats``: ``a``, ``slope``, ``k`` rest coefficients, ``k`` anchor
    gradients."""
    return REST_COEFFICIENTS + 2 * k


def triton_stats_shape(rows: int, k: int) -> tuple[int, int]:
    """The Triton operators' ``stats``: each row's :func:`stats_width` columns, then its
    weighted loss and weight and its anchors' classes (``k``, exact in float64); one more row,
    whose first entry is the total weight (the mean's divisor, which the forward kernel writes
    and the backward kernel reads) and whose second, an int64, counts the forward's finished
    programs (``triton_jit._counter``)."""
    return rows + 1, stats_width(k) + 2 + k


def anchor_gradients(k: int) -> int:
    """The column of ``G_0``, the first anchor gradient."""
    return REST_COEFFICIENTS + k


def fits(classes: int, k: int) -> bool:
    """Whether the kernels' float64 sums are guaranteed not to overflow (``k log(2n) <= 700``)."""
    return k * math.log(2.0 * classes) <= MAX_LOG_TERM


def direct(tensor: torch.Tensor) -> bool:
    """Whether an operator's Python implementation may be called without the dispatcher: a
    plain tensor, no trace, no dispatch mode (those must see the operator). Eager calls then
    skip the dispatcher's round trip into Python, 10-20 us per operator (issue #20)."""
    return (
        type(tensor) is torch.Tensor
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
    )


def _forward_outputs(scores, k, reduction):
    rows = scores.shape[0]
    shape = (rows,) if reduction == "none" else ()
    return (
        scores.new_empty(shape, dtype=working_dtype(scores.dtype)),
        scores.new_empty(rows, stats_width(k), dtype=torch.float64),
        scores.new_empty(rows, k, dtype=torch.int64),
    )


def _cpu_forward_fake(scores, target, weight, ignore_index, k, tau, alpha, reduction, margins):
    return _forward_outputs(scores, k, reduction)


def _cpu_loss_fake(scores, target, weight, ignore_index, k, tau, alpha, reduction, margins):
    return _forward_outputs(scores, k, reduction)[0]


def _triton_forward_fake(
    scores, target, weight, ignore_index, k, tau, alpha, reduction, margins, splits
):
    out = _forward_outputs(scores, k, reduction)[0]
    return out, scores.new_empty(triton_stats_shape(scores.shape[0], k), dtype=torch.float64)


def _backward_fake(grad_out, scores, *_):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


def _every_class_fake(scores, beta, k, tau, alpha, margins, with_grad):
    out = scores.new_empty(scores.shape[0], dtype=working_dtype(scores.dtype))
    grad = torch.empty_like(scores, memory_format=torch.contiguous_format)
    return out, (grad if with_grad else scores.new_empty(0))


def _vector_math_fake(x, function):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_FAKES = {
    "cpu_forward": _cpu_forward_fake,
    "cpu_loss": _cpu_loss_fake,
    "cpu_backward": _backward_fake,
    "triton_forward": _triton_forward_fake,
    "triton_backward": _backward_fake,
    "cpu_every_class": _every_class_fake,
    "triton_every_class": _every_class_fake,
    "vector_math": _vector_math_fake,
}


def _define() -> None:
    """Every schema and fake, once per process (this file may be imported twice, by path);
    ``recorded_backward`` has no fake: its one kernel, the PyTorch path's
    (:func:`smoothtopk.backends.pytorch.recorded_backward`), is made of ATen operations."""
    for name, schema in SCHEMAS.items():
        if hasattr(getattr(torch.ops, NAMESPACE), name):
            continue
        torch.library.define(f"{NAMESPACE}::{name}", schema)
        torch.library.register_fake(f"{NAMESPACE}::{name}")(_FAKES[name])
    if not hasattr(getattr(torch.ops, NAMESPACE), "recorded_backward"):
        torch.library.define(f"{NAMESPACE}::recorded_backward", f"({_RECORDED}) -> Tensor")


_define()
