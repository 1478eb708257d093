r"""The smooth top-k SVM loss of a linear layer's output, without materialising the logits.

``linear_smooth_topk_svm_loss(input, linear_weight, target, ...)`` equals
``smooth_topk_svm_loss(F.linear(input, linear_weight, linear_bias), target, ...)`` with the
calling convention of ``F.linear_cross_entropy``, but holds the ``(N, C)`` scores (and their
gradient) only a chunk of rows at a time: for a classifier over ``C`` classes well above the
hidden size ``d`` (a recommender over 10^5 items, a vocabulary), the logits are the largest
tensors of a step.

**How.** Rows are taken ``chunk_size`` at a time; per chunk the logits are formed by one
matmul and handed to the smooth loss's backend (:mod:`smoothtopk.backends`: the fused CPU
kernel, the Triton kernel, or PyTorch), whose contract is per row, so every backend computes
the fused loss. For ``reduction="mean"`` and ``"sum"`` the gradient does not depend on anything
but the scalar ``grad_out``: the forward forms ``dL/dinput``, ``dL/dlinear_weight`` and
``dL/dlinear_bias`` chunk by chunk (Liger-Kernel's way: no second matmul for the logits) and
the backward scales them in place. For ``"none"`` the per-row ``grad_out`` is known only in the
backward: the forward keeps the backend's ``O(k)`` factors per row and the backward recomputes
each chunk's logits (one more matmul). Peak memory beyond the inputs and the gradients is the
chunk's logits and their gradient, ``2 chunk_size C`` floats.

**Chunk size** (:func:`chunk_rows`, when ``chunk_size`` is None): rows whose logits hold a
quarter of the linear weight's ``C d`` elements, or ``2^20`` elements if that is more, i.e.
``max(d // 4, 2^20 // C)`` rows, at least 1 and at most ``N``. The chunk's temporaries then
stay at about half of the weight's gradient (which any training step holds), while each
chunk's matmul keeps enough rows (``d / 4``) to run at the speed of the full one.

**Probability targets and label smoothing**: for ``"mean"``/``"sum"`` the gradients are formed
in the forward as above, from the every-class loss's gradient
(:func:`_expected_gradient_forward`); ``"none"``, a target that requires grad and
``torch.compile`` take another road: each chunk is the unfused loss of the chunk's logits under
a non-reentrant checkpoint (:func:`_expected`), so the backward recomputes the chunk and every
autograd feature works as for the unfused loss.

**Limits.** The gradients of ``"mean"``/``"sum"`` are consumed in place by the first backward:
a second backward through the same graph (``retain_graph=True``) raises, and so does a double
backward (``create_graph=True``); use the unfused loss for those. Under autocast the matmuls run
in the autocast dtype and the loss in float32, as ``smooth_topk_svm_loss(F.linear(...))`` does.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from smoothtopk import linear_smooth_topk_svm_loss, smooth_topk_svm_loss
    >>> x, w = torch.randn(6, 4, requires_grad=True), torch.randn(50, 4, requires_grad=True)
    >>> target = torch.tensor([0, 7, 3, 49, 12, 3])
    >>> loss = linear_smooth_topk_svm_loss(x, w, target, k=3, chunk_size=4)
    >>> loss.backward()
    >>> reference = smooth_topk_svm_loss(F.linear(x, w), target, k=3)
    >>> torch.allclose(loss, reference)
    True
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from . import backends
from ._convention import expects_distribution, row_weights, target_distribution
from ._validation import (
    check_ignore_index,
    check_input_target,
    check_k,
    check_label_smoothing,
    check_linear,
    check_margins,
    check_positive,
    check_positive_int,
    check_reduction,
    check_target_range,
    check_temperature_scale,
    check_weight,
    checks_eagerly,
)
from .metrics import TopkCounts, topk_counts
from .smooth_topk import smooth_topk_svm_loss

#: the floor of a chunk's logits, in elements (4 MiB of float32)
MIN_CHUNK_ELEMENTS = 1 << 20
DOUBLE_BACKWARD = (
    "linear_smooth_topk_svm_loss: the fused loss supports one backward per forward (its "
    "gradients are formed in the forward and consumed in place; no retain_graph=True second "
    "backward, no create_graph=True); use smooth_topk_svm_loss(F.linear(...)) for those"
)


def chunk_rows(rows: int, in_features: int, classes: int) -> int:
    """Rows per chunk: ``max(d // 4, 2^20 // C)``, clamped to ``[1, rows]`` (module docstring).

    Example:
        >>> chunk_rows(4096, 256, 100_000), chunk_rows(4096, 256, 10_000), chunk_rows(8, 256, 10)
        (64, 104, 8)
    """
    return max(1, min(rows, max(in_features // 4, MIN_CHUNK_ELEMENTS // max(classes, 1))))


def linear_smooth_topk_svm_loss(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    k: int = 5,
    tau: float = 1.0,
    alpha: float | torch.Tensor = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Smooth top-k SVM loss of ``F.linear(input, linear_weight, linear_bias)``, fused.

    The value and the gradients of ``input``, ``linear_weight`` and ``linear_bias`` are those of
    ``smooth_topk_svm_loss(F.linear(input, linear_weight, linear_bias), target, k=k, tau=tau,
    alpha=alpha, weight=weight, ignore_index=ignore_index, reduction=reduction,
    label_smoothing=label_smoothing)`` (see
    :func:`smoothtopk.smooth_topk_svm_loss` for the loss), computed ``chunk_size`` rows at a
    time so that the ``(N, C)`` logits and their gradient never exist whole (module docstring:
    how, the chunk size's rule, limits). ``k = 1, tau = 1, alpha = 0`` is
    ``F.linear_cross_entropy``.

    Args:
        input: features, ``(N, d)`` or ``(d)``.
        linear_weight: the classifier's weight ``(C, d)``, as ``nn.Linear(d, C).weight``.
        target: class indices ``(N)`` or ``()`` (``ignore_index`` marks rows to skip), or
            class probabilities ``(N, C)`` or ``(C)``, a floating dtype (mixup, cutmix).
        linear_bias: the classifier's bias ``(C,)`` or None (keyword-only, as all below).
        k, tau, alpha, weight, ignore_index, reduction, label_smoothing: as
            :func:`smooth_topk_svm_loss` (probability targets and label smoothing: the
            expected loss over the target distribution; module docstring: its two roads).
        chunk_size: rows per chunk (an int >= 1); None: :func:`chunk_rows`.

    Shape:
        - input ``(N, d)`` or ``(d)``; linear_weight ``(C, d)``; linear_bias ``(C)``.
        - target ``(N)`` or ``()``, or probabilities ``(N, C)`` or ``(C)``; output a scalar,
          or ``(N)`` or ``()`` for ``"none"``.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> x, w, b = torch.randn(5, 8), torch.randn(30, 8), torch.randn(30)
        >>> target = torch.tensor([1, 2, 3, -100, 29])
        >>> ce = linear_smooth_topk_svm_loss(x, w, target, linear_bias=b, k=1, alpha=0.0)
        >>> torch.allclose(ce, F.linear_cross_entropy(x, w, target, linear_bias=b))
        True
    """
    tau = check_positive(tau, "tau")
    label_smoothing = check_label_smoothing(label_smoothing)
    plan = _plan(input, linear_weight, linear_bias, target, k, alpha, weight, ignore_index)
    check_reduction(reduction)
    check_temperature_scale(k, tau)
    alpha = plan.alpha
    if chunk_size is None:
        chunk = chunk_rows(*plan.x.shape, plan.classes)
    else:
        chunk = check_positive_int(chunk_size, "chunk_size")
    score_dtype = torch.float32 if plan.autocast else plan.mm_dtype  # autocast: loss in float32
    options = (weight, ignore_index, k, tau, alpha, reduction, chunk, plan.mm_dtype, score_dtype)
    with torch.autocast(plan.x.device.type, enabled=False) if plan.autocast else nullcontext():
        out = _route(plan, linear_weight, linear_bias, options, label_smoothing)
    if reduction == "none":
        out = out.reshape(input.shape[:-1])
    return out if out.dtype == plan.dtype else out.to(plan.dtype)


def _route(plan, linear_weight, linear_bias, options, label_smoothing) -> torch.Tensor:
    """The road of a call: class indices through the backend's loss, chunk by chunk, with the
    gradients formed in the forward (``"mean"``/``"sum"``) or the logits recomputed in the
    backward (``"none"``); probability targets and label smoothing through the every-class loss,
    gradients formed in the forward for ``"mean"``/``"sum"`` in eager mode, else (``"none"``,
    a target that requires grad, ``torch.compile``) each chunk the unfused loss under a
    checkpoint (:func:`_expected`); the forward alone when nothing needs a gradient."""
    weight, ignore_index, k, tau, alpha, reduction, chunk, _, score_dtype = options
    tensors, target = (plan.x, linear_weight, linear_bias), plan.target
    backward_needed = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    )
    if not expects_distribution(target, label_smoothing):
        if backward_needed:
            return _LinearSmoothTopk.apply(*tensors, target, *options, label_smoothing)
        return _loss_only(*tensors, target, *options)
    fast = reduction != "none" and not target.requires_grad and not torch.compiler.is_compiling()
    if backward_needed and fast:
        return _LinearSmoothTopk.apply(*tensors, target, *options, label_smoothing)
    loss_options = dict(k=k, tau=tau, alpha=alpha, weight=weight, ignore_index=ignore_index,
                        label_smoothing=label_smoothing)  # fmt: skip
    return _expected(plan, linear_weight, linear_bias, loss_options, reduction, chunk,
                     score_dtype)  # fmt: skip


def _expected(plan, linear_weight, linear_bias, options, reduction, chunk, score_dtype):
    """Probability targets or label smoothing: each chunk's loss is the unfused loss (with
    ``options``) of the chunk's logits, under a (non-reentrant) checkpoint, so that the
    backward recomputes the chunk's logits rather than keeping them: autograd, ``retain_graph``,
    double backward and a gradient for probability targets work as for the unfused loss."""
    xm, wm, bm = _casts(plan.x, linear_weight, linear_bias, plan.mm_dtype)
    per_chunk = "none" if reduction == "none" else "sum"

    def chunk_loss(x, target):
        scores = _logits(x, wm, bm, _out_dtype(score_dtype))  # half: the loss's float32
        return smooth_topk_svm_loss(scores, target, **options, reduction=per_chunk)

    tensors = (xm, wm, bm, plan.target)
    recorded = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    parts = [
        checkpoint(chunk_loss, x, t, use_reentrant=False) if recorded else chunk_loss(x, t)
        for x, t in zip(xm.split(chunk), plan.target.split(chunk), strict=True)
    ]
    if reduction == "none":
        return torch.cat(parts) if parts else xm.new_zeros(0, dtype=_out_dtype(score_dtype))
    total = sum((p.double() for p in parts), xm.new_zeros((), dtype=torch.float64))
    if reduction == "mean":
        total = total / _denominator(plan.x, plan.target, options["weight"],
                                     options["ignore_index"])  # fmt: skip
    return total


class _Plan:
    """A checked call: rows ``x (M, d)``, flat targets, the matmul and result dtypes."""

    def __init__(self, x, target, classes, alpha, autocast, mm_dtype, dtype):
        self.x, self.target, self.classes, self.alpha = x, target, classes, alpha
        self.autocast, self.mm_dtype, self.dtype = autocast, mm_dtype, dtype


def _plan(input, linear_weight, linear_bias, target, k, alpha, weight, ignore_index) -> _Plan:
    """Every check of a call (as the unfused loss's ``prepare``), without reading data except
    the CPU-only target range and margin checks; the input as rows ``(M, d)``."""
    device_type = input.device.type if isinstance(input, torch.Tensor) else "cpu"
    autocast = device_type != "meta" and torch.is_autocast_enabled(device_type)
    check_linear(input, linear_weight, linear_bias, target, same_dtype=not autocast)
    classes = linear_weight.shape[0]
    # the scores' shape without their memory: the unfused loss's checks of target and margins
    scores = input.new_empty(()).expand(*input.shape[:-1], classes)
    check_input_target(scores, target, probabilities=True)
    check_ignore_index(ignore_index)
    check_weight(weight, classes, input.device)
    check_k(k, classes)
    alpha = check_margins(alpha, scores, target)
    mm_dtype = torch.get_autocast_dtype(device_type) if autocast else input.dtype
    dtype = torch.float32 if autocast else input.dtype  # autocast: the loss in float32
    if target.is_floating_point():  # class probabilities: rows of the logits' shape
        return _Plan(input.reshape(-1, input.shape[-1]), target.reshape(-1, classes), classes,
                     alpha, autocast, mm_dtype, dtype)  # fmt: skip
    flat_target = target.reshape(-1).long()
    if checks_eagerly(flat_target):  # elsewhere the backend's kernel or its caller checks
        check_target_range(flat_target, classes, ignore_index)
    return _Plan(input.reshape(-1, input.shape[-1]), flat_target, classes, alpha, autocast,
                 mm_dtype, dtype)  # fmt: skip


def _logits(x, linear_weight, linear_bias, score_dtype) -> torch.Tensor:
    """One chunk's scores ``(rows, C)``, contiguous, in the backend's dtype. Formed as
    ``(W x^T)^T``: with a chunk's few rows, CPU BLAS runs the ``(C, rows)`` product about 1.5x
    faster than the ``(rows, C)`` one (measured at 64 rows, d = 256, C = 5e4); the transposing
    copy costs a pass over the chunk."""
    if linear_bias is None:
        product = torch.mm(linear_weight, x.t())
    else:
        product = torch.addmm(linear_bias[:, None], linear_weight, x.t())
    scores = product.t()
    if scores.dtype != score_dtype:  # autocast: one copy that casts and transposes
        scores = scores.to(dtype=score_dtype, memory_format=torch.contiguous_format)
    return scores.contiguous()


def _casts(x, linear_weight, linear_bias, mm_dtype):
    """The matmul operands in ``mm_dtype`` (autocast's casts, done once per call)."""
    return tuple(t if t is None or t.dtype == mm_dtype else t.to(mm_dtype)
                 for t in (x, linear_weight, linear_bias))  # fmt: skip


def _out_dtype(score_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if score_dtype == torch.float64 else torch.float32


def _total_weight(target, weight, ignore_index) -> torch.Tensor:
    """``sum_i weight[t_i]`` over the kept rows (float64): the mean's denominator."""
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    return row_weights(weight, safe, valid, torch.float64).sum()


def _denominator(x, target, weight, ignore_index) -> torch.Tensor:
    """``"mean"``'s divisor (float64), as ``F.cross_entropy``'s: the row count for probability
    targets, the kept rows' weight sum (:func:`_total_weight`) for class indices."""
    if target.is_floating_point():
        return x.new_tensor(x.shape[0], dtype=torch.float64)
    return _total_weight(target, weight, ignore_index)


def _spans(rows: int, chunk: int):
    return [(start, min(start + chunk, rows)) for start in range(0, rows, chunk)]


def _loss_only(x, linear_weight, linear_bias, target, weight, ignore_index, k, tau, alpha,
               reduction, chunk, mm_dtype, score_dtype):  # fmt: skip
    """The loss without autograd (evaluation, frozen layers): chunks of logits, forward only."""
    xm, wm, bm = _casts(x, linear_weight, linear_bias, mm_dtype)
    per_chunk = "none" if reduction == "none" else "sum"
    outs, backend = [], None
    for start, end in _spans(x.shape[0], chunk):
        scores = _logits(xm[start:end], wm, bm, score_dtype)
        backend = backend or _select(scores, target[start:end], k, weight, ignore_index, tau,
                                     alpha, per_chunk)  # fmt: skip
        outs.append(backend.forward(scores, target[start:end], weight, ignore_index, k, tau,
                                    alpha, per_chunk)[0])  # fmt: skip
    return _reduce(outs, x, target, weight, ignore_index, reduction, score_dtype)


def _reduce(outs, x, target, weight, ignore_index, reduction, score_dtype) -> torch.Tensor:
    """The chunks' outputs reduced as ``F.cross_entropy`` does (float64 sums)."""
    dtype = _out_dtype(score_dtype)
    if reduction == "none":
        return torch.cat(outs) if outs else x.new_zeros(0, dtype=dtype)
    total = sum((o.double() for o in outs), x.new_zeros((), dtype=torch.float64))
    if reduction == "mean":
        total = total / _total_weight(target, weight, ignore_index)
    return total.to(dtype)


def _select(scores, target, k, weight, ignore_index, tau, alpha, reduction):
    """The backend of the call, chosen on its first chunk (as the unfused loss chooses)."""
    return backends.select(scores, k, (target, weight, ignore_index, tau, alpha, reduction))


def _chunk(xm, wm, bm, target, backend, reduction, options):
    """One chunk's logits, the backend (chosen on the first chunk: ``backend`` None) and its
    forward: ``(scores, backend, out, saved)``."""
    weight, ignore_index, k, tau, alpha, _, _, score_dtype = options
    scores = _logits(xm, wm, bm, score_dtype)
    backend = backend or _select(scores, target, k, weight, ignore_index, tau, alpha, reduction)
    out, saved = backend.forward(scores, target, weight, ignore_index, k, tau, alpha, reduction)
    return scores, backend, out, saved


def _small(saved, rows: int, k: int) -> bool:
    """Whether a chunk's saved factors are ``O(k)`` per row (the fused kernels' are; the
    PyTorch backend's hold ``(rows, C)`` and are recomputed in the backward instead)."""
    return sum(t.numel() for t in saved) <= rows * (4 * k + 4) + 8


class _LinearSmoothTopk(torch.autograd.Function):
    """The fused loss: gradients formed in the forward (``"mean"``, ``"sum"``) and scaled in
    place by the backward, or (``"none"``) the backend's factors saved and the logits
    recomputed chunk by chunk in the backward."""

    @staticmethod
    def forward(ctx, x, linear_weight, linear_bias, target, weight, ignore_index, k, tau, alpha,
                reduction, chunk, mm_dtype, score_dtype, label_smoothing):  # fmt: skip
        ctx.options = (weight, ignore_index, k, tau, alpha, chunk, mm_dtype, score_dtype)
        needs = ctx.needs_input_grad[:3]
        if reduction == "none":
            return _rows_forward(ctx, x, linear_weight, linear_bias, target, needs)
        forward = _gradient_forward
        if expects_distribution(target, label_smoothing):
            forward = partial(_expected_gradient_forward, label_smoothing=label_smoothing)
        out, grads = forward(x, linear_weight, linear_bias, target, reduction, needs, ctx.options)
        ctx.save_for_backward(*grads)
        ctx.reduction = reduction
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD)
        if ctx.reduction == "none":
            grads = _rows_backward(ctx, grad_out)
        else:
            try:
                saved = ctx.saved_tensors
            except RuntimeError as error:  # scaled in place by a first backward already
                raise RuntimeError(DOUBLE_BACKWARD) from error
            grads = [None if g is None else g.mul_(grad_out) for g in saved]
        return (*grads, *([None] * 11))


def _gradient_forward(x, linear_weight, linear_bias, target, reduction, needs, options):
    """``"mean"``/``"sum"``: the loss and its gradients for ``grad_out = 1``, chunk by chunk."""
    weight, ignore_index, k, tau, alpha, chunk, mm_dtype, score_dtype = options
    xm, wm, bm = _casts(x, linear_weight, linear_bias, mm_dtype)
    scale = torch.ones((), dtype=torch.float64, device=x.device)
    if reduction == "mean":
        scale = 1.0 / _total_weight(target, weight, ignore_index)
    grad_scale = scale.to(_out_dtype(score_dtype))
    grads = _gradient_buffers(x, linear_weight, linear_bias, needs)
    outs, backend = [], None
    for start, end in _spans(x.shape[0], chunk):
        t = target[start:end]
        scores, backend, out, saved = _chunk(xm[start:end], wm, bm, t, backend, "sum", options)
        outs.append(out)
        g = backend.backward(grad_scale, scores, t, weight, ignore_index, saved, k, tau, alpha,
                             "sum")  # fmt: skip
        del scores, saved
        _accumulate(grads, g.to(mm_dtype), xm[start:end], wm, start, end)
        del g  # before the next chunk's logits: two (rows, C) buffers at a time, not three
    total = sum((o.double() for o in outs), x.new_zeros((), dtype=torch.float64))
    return (total * scale).to(_out_dtype(score_dtype)), grads


def _expected_gradient_forward(x, linear_weight, linear_bias, target, reduction, needs, options,
                               label_smoothing):  # fmt: skip
    """Probability targets or label smoothing, ``"mean"``/``"sum"``: the expected loss
    (:func:`smoothtopk._convention.target_distribution`) and its gradients for ``grad_out = 1``,
    chunk by chunk; each chunk's gradient is the every-class loss's own (the fused CPU and Triton
    operators form it in their one pass)."""
    weight, ignore_index, k, tau, alpha, chunk, mm_dtype, score_dtype = options
    xm, wm, bm = _casts(x, linear_weight, linear_bias, mm_dtype)
    dtype, classes = _out_dtype(score_dtype), linear_weight.shape[0]
    scale = torch.ones((), dtype=torch.float64, device=x.device)
    if reduction == "mean":
        scale = 1.0 / _denominator(x, target, weight, ignore_index)
    grads = _gradient_buffers(x, linear_weight, linear_bias, needs)
    outs, implementation = [], None
    for start, end in _spans(x.shape[0], chunk):
        scores = _logits(xm[start:end], wm, bm, dtype)  # half: the loss's float32
        dist = target_distribution(target[start:end], weight, ignore_index, label_smoothing,
                                   classes, dtype)  # fmt: skip
        implementation = implementation or backends.every_class_loss(
            scores, k, (dist.beta, tau, alpha))  # fmt: skip
        with torch.enable_grad():
            kept = dist.kept(scores).detach().requires_grad_()
            losses = implementation(kept, dist.beta, k, tau, alpha)
            (g,) = torch.autograd.grad(losses, kept, scale.to(losses.dtype).expand_as(losses))
        outs.append(losses.detach().sum(dtype=torch.float64))
        del scores, kept
        _accumulate(grads, g.to(mm_dtype), xm[start:end], wm, start, end)
        del g
    total = sum(outs, x.new_zeros((), dtype=torch.float64))
    return (total * scale).to(dtype), grads


def _gradient_buffers(x, linear_weight, linear_bias, needs):
    """Zeroed gradients of the tensors that need one (None for the others)."""
    need_x, need_w, need_b = needs
    return [
        torch.zeros_like(x) if need_x else None,
        torch.zeros_like(linear_weight) if need_w else None,
        torch.zeros_like(linear_bias) if need_b and linear_bias is not None else None,
    ]


def _accumulate(grads, g, xm, wm, start, end) -> None:
    """Add one chunk's share: ``g @ W`` into its rows of ``dx``, ``g^T x`` into ``dW``,
    ``sum g`` into ``db`` (``g``, ``xm``, ``wm`` in the matmul dtype)."""
    grad_x, grad_w, grad_b = grads
    if grad_x is not None:  # (W^T g^T)^T: the faster orientation with few rows, as _logits
        grad_x[start:end] = torch.mm(wm.t(), g.t()).t()
    if grad_w is not None:
        if grad_w.dtype == g.dtype:
            grad_w.addmm_(g.t(), xm)
        else:  # autocast: the matmul in its dtype, the sum over chunks in the weight's
            grad_w += g.t() @ xm
    if grad_b is not None:
        grad_b += g.sum(dim=0, dtype=grad_b.dtype)


def _rows_forward(ctx, x, linear_weight, linear_bias, target, needs):
    """``"none"``: per-row losses; the backend's factors kept when they are ``O(k)`` a row."""
    weight, ignore_index, k, tau, alpha, chunk, mm_dtype, score_dtype = ctx.options
    xm, wm, bm = _casts(x, linear_weight, linear_bias, mm_dtype)
    outs, kept, backend = [], [], None
    keep = True
    for start, end in _spans(x.shape[0], chunk):
        t = target[start:end]
        _, backend, out, saved = _chunk(xm[start:end], wm, bm, t, backend, "none", ctx.options)
        outs.append(out)
        keep = keep and _small(saved, end - start, k)
        kept.append(saved if keep else ())
    ctx.backend = backend
    ctx.keep = keep
    ctx.per_chunk = len(kept[0]) if keep and kept else 0
    ctx.save_for_backward(x, linear_weight, linear_bias, target,
                          *[t for saved in kept for t in saved] if keep else ())  # fmt: skip
    ctx.reduction = "none"
    ctx.needs = needs
    return _reduce(outs, x, target, weight, ignore_index, "none", score_dtype)


def _rows_backward(ctx, grad_out):
    """``"none"``: per chunk, the logits again (and the backend's factors, if not kept), the
    backend's gradient for this chunk's ``grad_out`` rows, and the matmuls."""
    weight, ignore_index, k, tau, alpha, chunk, mm_dtype, score_dtype = ctx.options
    x, linear_weight, linear_bias, target, *kept = ctx.saved_tensors
    xm, wm, bm = _casts(x, linear_weight, linear_bias, mm_dtype)
    grads = _gradient_buffers(x, linear_weight, linear_bias, ctx.needs)
    backend, width = ctx.backend, ctx.per_chunk
    for index, (start, end) in enumerate(_spans(x.shape[0], chunk)):
        t = target[start:end]
        scores = _logits(xm[start:end], wm, bm, score_dtype)
        if ctx.keep:
            saved = tuple(kept[index * width : (index + 1) * width])
        else:
            saved = backend.forward(scores, t, weight, ignore_index, k, tau, alpha, "none")[1]
        g = backend.backward(grad_out[start:end].contiguous(), scores, t, weight, ignore_index,
                             saved, k, tau, alpha, "none")  # fmt: skip
        del scores, saved
        _accumulate(grads, g.to(mm_dtype), xm[start:end], wm, start, end)
        del g  # before the next chunk's logits: two (rows, C) buffers at a time, not three
    return grads


def linear_topk_counts(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    k=(1, 5),
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> TopkCounts:
    """Top-k counts (:func:`smoothtopk.metrics.topk_counts`: exact, ties shared) of the scores
    ``F.linear(input, linear_weight, linear_bias)``, formed ``chunk_size`` rows at a time:
    evaluation at ``10^6`` classes without the logits. Counts of chunks add up exactly.

    Shape:
        as :func:`linear_smooth_topk_svm_loss`; the output as ``topk_counts``'s per sample.

    Example:
        >>> import torch
        >>> x, w = torch.eye(3), torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]])
        >>> counts = linear_topk_counts(x, w, torch.tensor([0, 2, 3]), k=(1, 2), chunk_size=2)
        >>> counts.correct, counts.total
        (tensor([1, 1]), tensor(3))
    """
    check_linear(input, linear_weight, linear_bias, target, same_dtype=True)
    x = input.detach().reshape(-1, input.shape[-1])
    flat_target = target.reshape(-1)
    rows, classes = x.shape[0], linear_weight.shape[0]
    chunk = chunk_rows(rows, x.shape[1], classes) if chunk_size is None else (
        check_positive_int(chunk_size, "chunk_size"))  # fmt: skip
    total = None
    with torch.no_grad():
        for start, end in _spans(rows, chunk) or [(0, 0)]:
            scores = torch.nn.functional.linear(x[start:end], linear_weight, linear_bias)
            part = topk_counts(scores, flat_target[start:end], k, ignore_index)
            if total is not None:
                part = TopkCounts(*(a + b for a, b in zip(total, part, strict=True)))
            total = part
    return total
