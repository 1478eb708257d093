"""The public smooth top-k SVM loss: prepare, select a backend, apply, reduce."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch

from . import backends
from ._convention import (
    expected_loss,
    expects_distribution,
    finish,
    forward_ad_active,
    num_classes_of,
    prepare,
    restore,
    rows,
)  # fmt: skip
from ._validation import (
    VMAP_REFUSED,
    check_label_smoothing,
    check_margins,
    check_positive,
    check_target_range,
    check_temperature_scale,
    keyword_only,
    positional_error,
)
from .backends import pytorch as pytorch_backend


@keyword_only
def smooth_topk_svm_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *positional,
    k: int = 5,
    tau: float = 1.0,
    alpha: float | torch.Tensor = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Smooth top-k SVM loss :math:`L_{k,\tau}` with the calling convention of ``F.cross_entropy``.

    .. math::

        L_{k,\tau}(s, y) = \tau \log\Big(1 + e^{\alpha/\tau}
            \frac{\sigma_k(x_{\setminus y})}{x_y\, \sigma_{k-1}(x_{\setminus y})}\Big),
        \qquad x_j = e^{s_j / (k\tau)},

    with :math:`\sigma_d` the elementary symmetric polynomial of degree ``d`` over the classes
    other than ``y``: a temperature-``tau`` log-sum-exp over all k-subsets of classes that
    replaces the max of the hard top-k hinge (:func:`smoothtopk.topk_svm_loss`, its limit as
    ``tau -> 0``). ``k = 1, alpha = 0, tau = 1`` is cross-entropy. With per-class margins
    ``alpha`` is ``alpha[y]`` in the formula, sample by sample. Computed exactly in
    ``O(C k)`` per sample by the fused CPU kernel, the Triton kernel on CUDA, or PyTorch
    operations (``SMOOTHTOPK_BACKEND``, :mod:`smoothtopk.backends`).

    Edge rules: a sample with fewer than ``k`` finite scores besides its target has loss 0 and
    gradient 0 (the limit; ``-inf`` scores rule classes out); NaN or ``+inf`` scores give NaN;
    ignored elements contribute nothing to the value or the gradient.

    Probability targets and label smoothing (as ``F.cross_entropy``): for a target
    distribution ``q`` the loss is the expectation :math:`\sum_c w_c q_c L_{k,\tau}(s, c)`
    (cross-entropy's ``-sum_c w_c q_c log p_c`` at ``k = 1, alpha = 0, tau = 1``);
    ``label_smoothing = eps`` replaces ``q`` by ``(1 - eps) q + eps / C``, for class indices
    ``q`` being one-hot. All ``C`` losses come from one ``O(C k)`` pass per sample
    (:mod:`smoothtopk.backends.every_class`, float64); for probabilities ``"mean"`` divides by
    the number of samples, for class indices by the weight sum, as ``F.cross_entropy``.

    Args:
        input: scores (logits).
        target: class indices, integer dtype (``ignore_index`` marks elements to skip), or
            class probabilities, a floating tensor of the input's shape (e.g. mixup/cutmix
            targets; its values are not checked, and a gradient flows to it).
        k: the top-k of interest, ``1 <= k < C`` (keyword-only, as every argument below).
        tau: temperature ``> 0``; smaller is closer to the hard top-k hinge.
        alpha: margin ``>= 0``, or per-class margins: a floating ``(C,)`` tensor (on the
            input's device; constants, no gradient) of which sample ``i`` uses
            ``alpha[target_i]``, e.g. :func:`smoothtopk.ldam_margins` for long-tailed data.
        weight: ``(C,)`` per-class weights, applied as ``weight[target]``.
        ignore_index: a target value that is ignored.
        reduction: ``"mean"`` (weighted mean over non-ignored elements), ``"sum"`` or ``"none"``.
        label_smoothing: ``eps`` in ``[0, 1]``, the weight of the uniform distribution mixed
            into the target (default 0).

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        - target: ``()``, ``(N)`` or ``(N, d1, ...)`` class indices, or probabilities of the
          input's shape.
        - output: a scalar, or the target's shape for ``reduction="none"``; float16/bfloat16
          inputs are computed in float32 and returned in their dtype.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from smoothtopk import smooth_topk_svm_loss
        >>> scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 0.2]], requires_grad=True)
        >>> target = torch.tensor([0, 2])
        >>> loss = smooth_topk_svm_loss(scores, target, k=2, tau=1.0, alpha=1.0)
        >>> loss.backward()
        >>> ce = smooth_topk_svm_loss(scores, target, k=1, tau=1.0, alpha=0.0)
        >>> torch.allclose(ce, F.cross_entropy(scores, target))
        True
        >>> mixed = torch.tensor([[0.7, 0.0, 0.3, 0.0], [0.0, 0.5, 0.5, 0.0]])  # mixup's targets
        >>> loss = smooth_topk_svm_loss(scores, mixed, k=2, label_smoothing=0.1)
    """
    if positional:
        raise positional_error("smooth_topk_svm_loss", positional)
    key = _plan_key(input, target, k, tau, alpha, weight, ignore_index, reduction,
                    label_smoothing)  # fmt: skip
    plan = _PLANS.get(key) if key is not None else None
    if plan is not None:  # checked and chosen before: the lean eager path
        return plan.run(input, target, weight, ignore_index, k, tau, alpha, reduction)
    tau = check_positive(tau, "tau")
    alpha = check_margins(alpha, input, target)
    label_smoothing = check_label_smoothing(label_smoothing)
    if expects_distribution(target, label_smoothing):
        return _expected(input, target, k, tau, alpha, weight, ignore_index, reduction,
                         label_smoothing)  # fmt: skip
    call = prepare(input, target, k, weight, ignore_index, reduction, device_check=False)
    check_temperature_scale(k, tau)
    backend = backends.select(
        call.scores, k, (call.target, weight, ignore_index, tau, alpha, reduction)
    )
    if key is not None:
        _remember(key, backend, input, target, (k, tau, alpha, weight, ignore_index, reduction))
    if not (call.targets_checked or backend.CHECKS_TARGETS):  # the device form, off the CPU
        check_target_range(call.target, call.scores.shape[1], ignore_index)
    arguments = (call.target, weight, ignore_index, k, tau, alpha, reduction)
    if call.autocast:
        with torch.autocast(call.scores.device.type, enabled=False):
            out = _apply(backend, call.scores, arguments)
    else:
        out = _apply(backend, call.scores, arguments)
    return finish(out, call, reduction)


class _Plan(NamedTuple):
    """What an eager call needs beyond its arguments once they have been checked."""

    backend: ModuleType  # backends.select's choice
    differentiable: Callable | None  # its forward+backward as one operator (``loss``), if any
    classes: int
    flat: bool  # scores (M, C) and int64 targets (M,) already: no reshape
    range_check: bool  # the backend's kernel does not check the targets itself
    #: ``run(input, target, weight, ignore_index, k, tau, alpha, reduction)``: the call
    run: Callable | None


#: plans by :func:`_plan_key`; cleared when full (shapes that vary call by call)
_PLANS: dict[tuple, _Plan] = {}
_MAX_PLANS = 512


def _plan_key(input, target, k, tau, alpha, weight, ignore_index, reduction, label_smoothing):
    """The key of a call whose checks and backend choice depend only on it, or None.

    The argument checks and :func:`smoothtopk.backends.select` cost several times the kernel at
    small shapes (issue #20); they depend on the shapes, dtypes and devices of the tensors, the
    Python values of the rest, ``SMOOTHTOPK_BACKEND`` (its raw value,
    :func:`smoothtopk.backends.setting`; checked by ``requested``) and autocast, so a call with
    the key of a call that passed them passes them too. Only plain tensors, Python scalars of the
    exact types (``k=5.0`` must still be refused), a float margin, class indices without label
    smoothing, in eager mode outside ``torch.func`` transforms, forward-mode AD, dispatch modes
    and autocast (:func:`_traced_or_transformed`); every other call takes the full path, so a
    plan's call never needs the operators. Target values are never part of it: the kernels
    check them (or :func:`check_target_range` does, :class:`_Plan`).
    """
    if not (
        type(input) is torch.Tensor
        and type(target) is torch.Tensor
        and type(k) is int
        and type(tau) is float
        and type(alpha) is float
        and type(ignore_index) is int
        and type(reduction) is str
        and type(label_smoothing) is float
        and label_smoothing == 0.0
        and (weight is None or type(weight) is torch.Tensor)
    ):
        return None
    # autocast on any device: torch's cheapest test (0.2 us; is_autocast_enabled(device.type)
    # parses the name, 0.7 us); meta tensors have no autocast (the full path knows them)
    if _traced_or_transformed() or torch._C._is_any_autocast_enabled() or input.is_meta:
        return None
    weight_key = None if weight is None else (
        weight.shape, weight.dtype, weight.device, weight.requires_grad
    )  # fmt: skip
    return (
        input.shape, input.dtype, input.device, target.shape, target.dtype, target.device, k,
        tau, alpha, weight_key, ignore_index, reduction, backends.setting(),
    )  # fmt: skip


def clear_plans() -> None:
    """Forget every checked call: the next call of each kind is checked and its backend chosen
    again (for code that changes what a backend can do, such as tests that stub one)."""
    _PLANS.clear()


def _traced_or_transformed() -> bool:
    """A torch.compile trace, a ``torch.func`` transform, a forward-mode AD level or a dispatch
    mode (which must see the backends' operators: :func:`smoothtopk.backends._abi.direct`)."""
    return (
        torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or forward_ad_active()
        or torch._C._len_torch_dispatch_stack() != 0
    )


def _remember(key: tuple, backend: ModuleType, input, target, options: tuple) -> None:
    """Plan the key's calls (``options``: ``k, tau, alpha, weight, ignore_index, reduction``
    of this one, checked)."""
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    flat = input.dim() == 2 and target.dtype == torch.int64
    differentiable = getattr(backend, "loss", None)  # optional in the backend contract
    range_check = not backend.CHECKS_TARGETS
    plan = _Plan(backend, differentiable, num_classes_of(input), flat, range_check, None)
    # the call itself when nothing is left to do around it: rows already, targets checked by
    # the kernel, the loss in the input's dtype (no Python frame of ours, issue #20)
    alone = flat and not range_check and input.dtype in (torch.float32, torch.float64)
    if not alone:
        run = functools.partial(_run, plan)
    elif differentiable is not None:  # the backend's operator: autograd in C++
        run = differentiable
    elif hasattr(backend, "prepare"):  # its launches set up once (the Triton kernel's)
        run = functools.partial(_prepared, backend.prepare(input, *options))
    else:
        run = functools.partial(_eager, backend)
    _PLANS[key] = plan._replace(run=run)


def _run(plan: _Plan, input, target, weight, ignore_index, k, tau, alpha, reduction):
    """A call of a known plan: rows, the range check where the kernel does not do it, the
    backend's differentiable operator (``loss``, the CPU kernel's: autograd in C++) or its
    forward and backward through the eager Function, the target's shape and the input's
    dtype."""
    scores, flat_target = (input, target) if plan.flat else rows(input, target)
    if plan.range_check:
        check_target_range(flat_target, plan.classes, ignore_index)
    arguments = (flat_target, weight, ignore_index, k, tau, alpha, reduction)
    if plan.differentiable is not None:  # autograd in C++
        out = plan.differentiable(scores, *arguments)
    else:
        out = _eager(plan.backend, scores, *arguments)
    return restore(out, target.shape, input.dtype, reduction)


def _prepared(prepared, scores, target, weight, ignore_index, k, tau, alpha, reduction):
    """An eager call of a kind the backend prepared (``prepare``, :func:`_remember`; never under
    a dispatch mode, :func:`_plan_key`): its forward, through :class:`_PreparedSmoothTopkSVM`
    when a gradient can flow."""
    if torch.is_grad_enabled() and scores.requires_grad:
        return _PreparedSmoothTopkSVM.apply(scores, target, weight, prepared)
    return prepared.forward(scores, target, weight)[0]


def _eager(backend, scores, target, weight, ignore_index, k, tau, alpha, reduction):
    """An eager call outside traces and transforms (:func:`_traced_or_transformed`): the
    backend's forward and backward through :class:`_EagerSmoothTopkSVM`, or its forward alone
    when no gradient can flow."""
    if torch.is_grad_enabled() and scores.requires_grad:
        return _EagerSmoothTopkSVM.apply(
            scores, target, weight, ignore_index, k, tau, alpha, reduction, backend
        )
    return backend.forward(scores, target, weight, ignore_index, k, tau, alpha, reduction)[0]


def _expected(input, target, k, tau, alpha, weight, ignore_index, reduction, label_smoothing):
    """Probability targets or label smoothing: the expected loss over the target distribution
    (:func:`smoothtopk._convention.expected_loss`) from the loss of every class
    (:func:`smoothtopk.backends.every_class_loss`: the fused CPU or Triton kernel, else
    PyTorch operations on every device)."""
    call = prepare(input, target, k, weight, ignore_index, reduction, probabilities=True)
    check_temperature_scale(k, tau)

    def row_losses(scores: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        implementation = backends.every_class_loss(scores, k, (beta, tau, alpha))
        return implementation(scores, beta, k, tau, alpha)

    return expected_loss(row_losses, call, weight, ignore_index, reduction, label_smoothing)


def _apply(backend, scores: torch.Tensor, arguments: tuple) -> torch.Tensor:
    """The loss through the ``autograd.Function``, or, when no gradient can flow (grad mode off,
    as in evaluation, or scores that do not require grad; no forward-mode AD level open, which
    the Function refuses), the backend's forward alone: nothing to save, no Function to pay
    for."""
    backward_needed = torch.is_grad_enabled() and scores.requires_grad
    if not backward_needed and not forward_ad_active():
        return backend.forward(scores, *arguments)[0]
    return _SmoothTopkSVM.apply(scores, *arguments, backend.NAME)[0]


def _keep_for_backward(ctx, arguments: tuple, saved: tuple) -> None:
    """What both Functions' backward reads: the inputs it needs, the backend's factors
    ``saved`` and the options (``arguments`` as the backend's forward)."""
    scores, target, weight, ignore_index, k, tau, alpha, reduction = arguments
    per_class = isinstance(alpha, torch.Tensor)  # per-class margins travel as a saved tensor
    ctx.save_for_backward(scores, target, weight, alpha if per_class else None, *saved)
    ctx.options = (ignore_index, k, tau, None if per_class else alpha, reduction)


def _recorded(grad_out, scores, target, weight, options):
    """Under ``create_graph=True`` (grad mode on inside the backward) the gradient by recorded
    PyTorch operations, so that double backward is exact too; else None (``options``:
    ``ignore_index, k, tau, alpha, reduction``). Every Function's backward asks it first."""
    if not torch.is_grad_enabled():
        return None
    return pytorch_backend.recorded_backward(grad_out, scores, target, weight, *options)


def _backward(ctx, backend, grad_out):
    """Both generic Functions' backward: ``dL/dscores`` by :func:`_recorded` or the backend's
    backward."""
    scores, target, weight, margins, *saved = ctx.saved_tensors
    ignore_index, k, tau, alpha, reduction = ctx.options
    alpha = margins if alpha is None else alpha
    grad = _recorded(grad_out, scores, target, weight, (ignore_index, k, tau, alpha, reduction))
    if grad is None:
        grad = backend.backward(
            grad_out, scores, target, weight, ignore_index, tuple(saved), k, tau, alpha, reduction
        )
    return grad


class _SmoothTopkSVM(torch.autograd.Function):
    """One backend forward and one backend backward (:func:`_backward`).

    The output is ``(loss, *saved)``, the backend's factors as non-differentiable outputs, so
    that the forward takes no ``ctx`` (``setup_context``): ``torch.func.grad`` works; ``vmap``
    is refused with a message (also by the argument checks, before any value is read), and so is
    forward-mode AD, by torch (no ``jvp`` here: Dynamo cannot trace a Function that has one).
    """

    @staticmethod
    def forward(*args):
        # ``(scores, target, weight, ignore_index, k, tau, alpha, reduction, name)``. A bare
        # ``*args`` with a precomputed ``__signature__`` (below): torch binds the arguments to
        # this signature at every call when ``setup_context`` is defined, which costs about
        # 25 us per call for a named signature against 4 us for this one (issue #20).
        *arguments, name = args
        out, saved = backends.module(name).forward(*arguments)
        return (out, *saved)

    @staticmethod
    def setup_context(ctx, inputs, output):
        *arguments, name = inputs
        saved = output[1:]
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*saved)
        _keep_for_backward(ctx, arguments, saved)
        ctx.name = name

    @staticmethod
    def backward(ctx, grad_out, *_):
        if grad_out is None:
            return (None,) * 9
        return _backward(ctx, backends.module(ctx.name), grad_out), *([None] * 8)

    @staticmethod
    def vmap(info, in_dims, *args):
        raise RuntimeError(VMAP_REFUSED)


_SmoothTopkSVM.forward.__signature__ = inspect.signature(_SmoothTopkSVM.forward)


class _EagerSmoothTopkSVM(torch.autograd.Function):
    """:class:`_SmoothTopkSVM` in the classic form (``forward(ctx, ...)``), for eager calls
    outside ``torch.func`` transforms and traces, which refuse or need ``setup_context``: torch
    applies it without binding the arguments to a signature or calling ``setup_context`` through
    its machinery, about 30 us less per call (issue #20). Its one output is the loss: the
    backend's factors are saved as intermediates (which the classic form allows), not returned,
    about 6 us less per forward+backward than three more outputs for autograd to track. It
    takes the backend module itself (no lookup by name). Same forward, same backward."""

    @staticmethod
    def forward(ctx, scores, target, weight, ignore_index, k, tau, alpha, reduction, backend):
        arguments = (scores, target, weight, ignore_index, k, tau, alpha, reduction)
        out, saved = backend.forward(*arguments)
        _keep_for_backward(ctx, arguments, saved)
        ctx.backend = backend
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(ctx, ctx.backend, grad_out), None, None, None, None, None, None, None, None


class _PreparedSmoothTopkSVM(torch.autograd.Function):
    """:class:`_EagerSmoothTopkSVM` for a prepared kind of call (:func:`_prepared`): the
    prepared forward and backward, the options kept by the prepared call (``options``:
    ``ignore_index, k, tau, alpha, reduction``), the backend's factors kept as they are (made
    here, seen by nobody else: no saved-tensor bookkeeping, issue #20); under
    ``create_graph=True`` the recorded backward (:func:`_recorded`)."""

    @staticmethod
    def forward(ctx, scores, target, weight, prepared):
        out, saved = prepared.forward(scores, target, weight)
        ctx.save_for_backward(scores, target, weight)
        ctx.prepared, ctx.factors = prepared, saved
        return out

    @staticmethod
    def backward(ctx, grad_out):
        scores, target, weight = ctx.saved_tensors
        grad = _recorded(grad_out, scores, target, weight, ctx.prepared.options)
        if grad is None:
            grad = ctx.prepared.backward(grad_out, scores, target, ctx.factors)
        return grad, None, None, None
