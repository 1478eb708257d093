r"""The fused CPU kernel (``csrc/smooth_topk_cpu.cpp``): the ``"cpu"`` backend of the smooth loss.

One operator per direction computes the loss of every row, its weight, ``ignore_index`` and the
reduction, and then the gradient, in float64 inside, with the algorithm of
:mod:`smoothtopk.backends.pytorch` (docs/algorithm.md). Per row, with
:math:`z' = \alpha + (a - s_y)/k + \tau(\log A - \log B)` (no division by :math:`\tau`, so no
overflow at extreme :math:`\tau` or :math:`\alpha`):

.. math::

    l = \mathrm{relu}(z') + \tau \log(1 + e^{-|z'|/\tau}), \qquad
    \text{out} = \begin{cases} (w_{t_i} l_i)_i & \text{none} \\
    \sum_i w_{t_i} l_i & \text{sum} \\
    \sum_i w_{t_i} l_i / \sum_i w_{t_i} & \text{mean} \end{cases}

over the rows whose target is not ``ignore_index`` (ignored rows give exactly 0, and their
class's weight is never read). :math:`\alpha` is a float, or per-class margins: a ``(C,)``
tensor ``alpha_per_class`` of which row ``i`` reads ``alpha_per_class[t_i]``. A row with fewer
than ``k`` finite other scores has loss and gradient 0 (the limit); NaN or +inf in a row gives
NaN, as ``F.cross_entropy``.

The operators ``smoothtopk::cpu_forward`` / ``cpu_backward`` and their fakes are defined by
:mod:`smoothtopk.backends._abi`; the C++ file implements them for CPU tensors. It is compiled
once per machine by :mod:`smoothtopk.backends._cpu_build` (about 45 s, cached in
``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``; the first build says so on
stderr) at the first call, or ahead of time by
``python -c "import smoothtopk; smoothtopk.backends.cpu.load()"``.
``SMOOTHTOPK_BACKEND=pytorch`` (:mod:`smoothtopk.backends`, the one switch) keeps a process
from using (or building) it; if it cannot be built, one warning says why and the PyTorch path
computes the same numbers.

Shape:
    scores ``(M, C)``, target ``(M,)``, weight and alpha_per_class ``(C,)`` or None; out
    ``(M,)`` for ``"none"``, else ``()``; saved: ``(M, 2 + 2k)`` float64 factors and ``(M, k)``
    anchor classes.

Example:
    >>> import torch
    >>> from smoothtopk.backends import cpu
    >>> scores, target = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([-100, 1])
    >>> if cpu.unavailable(scores, 1) is None:
    ...     out, saved = cpu.forward(scores, target, None, -100, 1, 1.0, 0.0, "mean")
    ...     grad = cpu.backward(torch.tensor(1.0), scores, target, None, -100, saved,
    ...                                1, 1.0, 0.0, "mean")
    ...     print(round(out.item(), 4), grad[0].tolist())
    1.4076 [0.0, 0.0, 0.0]
"""

from __future__ import annotations

import threading
import warnings

import torch

from .._validation import user_stacklevel
from . import _abi, _cpu_build, every_class

NAME = "cpu"
#: out-of-range targets raise in the kernel (TORCH_CHECK): no separate device check
CHECKS_TARGETS = True
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
BUILD = "build it first with smoothtopk.backends.cpu.load() (or an eager call)"

_lock = threading.Lock()
_state: dict[str, object] = {}
_forward_op = torch.ops.smoothtopk.cpu_forward.default
_backward_op = torch.ops.smoothtopk.cpu_backward.default
_loss_op = torch.ops.smoothtopk.cpu_loss.default
#: the operator's C++ callable under its OpOverload (whose __call__ only forwards to it): one
#: Python frame less per eager step (issue #20)
_loss_call = getattr(_loss_op, "_op", _loss_op)


def loss(scores, target, weight, ignore_index, k, tau, alpha, reduction):
    """The loss of :func:`forward`, differentiable by autograd in C++ (``smoothtopk::cpu_loss``,
    ``csrc/autograd_cpu.cpp``): an eager step with no Python after this call, as
    ``F.cross_entropy``. For eager calls outside ``torch.func`` transforms and forward-mode AD;
    the public loss routes traced calls through its ``autograd.Function``."""
    if isinstance(alpha, torch.Tensor):  # per-class margins, read as alpha[t_i]
        return _loss_call(scores, target, weight, ignore_index, k, tau, 0.0, reduction, alpha)
    return _loss_call(scores, target, weight, ignore_index, k, tau, alpha, reduction, None)


def forward(scores, target, weight, ignore_index, k, tau, alpha, reduction):
    """Loss (reduced; float64 for float64 scores, else float32) and the saved factors.
    ``alpha``: a float, or per-class margins ``(C,)`` (the kernel reads ``alpha[t_i]``)."""
    margins = alpha if isinstance(alpha, torch.Tensor) else None
    alpha = 0.0 if margins is not None else alpha
    out, stats, anchor_index = _forward_op(
        scores, target, weight, ignore_index, k, tau, alpha, reduction, margins
    )
    return out, (stats, anchor_index)


def backward(grad_out, scores, target, weight, ignore_index, saved, k, tau, alpha, reduction):
    """dL/dscores ``(M, C)`` in the scores' dtype; ignored rows exactly 0. The weight and the
    mean's ``1 / sum w`` were folded into the saved factors by :func:`forward`."""
    stats, anchor_index = saved
    return _backward_op(
        grad_out, scores, target, stats, anchor_index, ignore_index, k, tau, reduction
    )


def expected(scores, beta, k, tau, alpha):
    """``sum_c beta_{ic} L(s_i, c)`` per row, ``(M,)`` (float64 for float64 scores, else
    float32): :func:`smoothtopk.backends.every_class.expected` in one pass of the kernel, which
    also forms the gradient when autograd needs it (:func:`every_class.fused_expected`)."""
    return every_class.fused_expected("cpu_every_class", scores, beta, k, tau, alpha)


def unavailable(scores: torch.Tensor, k: int) -> str | None:
    """None if the kernel computes this call (building it on first use, outside a
    torch.compile trace); otherwise why not, in one line."""
    if not scores.is_cpu:
        return f"scores are on {scores.device}, the fused kernel runs on the CPU"
    if scores.dtype not in DTYPES:
        return f"scores are {scores.dtype}, the fused kernel reads float32/64, float16, bfloat16"
    if scores.dim() != 2:
        return f"scores have {scores.dim()} dimensions, the fused kernel takes (rows, classes)"
    classes = scores.shape[1]
    if not _abi.fits(classes, k):
        bound = _abi.MAX_LOG_TERM
        return f"k log(2 C) > {bound:g} at k={k}, C={classes}: float64 sums could overflow"
    if _state.get("ops") is not None:
        return None
    if torch.compiler.is_compiling():
        return (
            f"the fused CPU kernel is not built in this process; a trace never builds it: {BUILD}"
        )
    if load() is None:
        return f"the fused CPU kernel could not be built ({_state.get('error')})"
    return None


def load():
    """The operator namespace ``torch.ops.smoothtopk`` with its CPU kernels (building them once
    per machine, loading them once per process), or None if they cannot be built: then one
    warning, at the caller's line, says why and what to install."""
    with _lock:
        if "ops" not in _state:
            try:
                _cpu_build.load_or_build()
                _state["ops"] = torch.ops.smoothtopk
            except Exception as error:  # BuildError, or a library that does not load
                _state["ops"], _state["error"] = None, _cpu_build.one_line(error)
                warnings.warn(
                    f"smoothtopk: the fused CPU kernel could not be built: {error}; "
                    "using the PyTorch implementation (same results, slower).",
                    RuntimeWarning,
                    stacklevel=user_stacklevel(),
                )
        return _state["ops"]
