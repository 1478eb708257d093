r"""The PyTorch backend of the smooth loss: the reference implementation, on every device.

.. math::

    L_{k,\tau}(s, y) = \tau \,\mathrm{softplus}(z), \qquad
    \tau z = \alpha + \frac{a - s_y}{k} + \tau\big(\log A - \log B\big),

``x_j = e^{s_j / (k tau)}``, with ``a`` the k-th largest score other than the target and
``e^{a/(k tau)} A / B`` the ratio ``sigma_k(x) / sigma_{k-1}(x)`` of elementary symmetric
polynomials over the scores without the target. ``alpha`` is a float or per-class margins, a
``(C,)`` tensor: row ``i`` then uses ``alpha[t_i]``. ``k = 1`` is the closed form
``tau log sum_j exp((s_j + alpha [j != y] - s_y) / tau)`` (cross-entropy when ``alpha = 0,
tau = 1``): the tree is a plain sum and the anchor is the largest other score, so the target's
gradient is ``-sigmoid(.)`` and never the cancelling ``softmax_y - 1``. The value is formed from
``tau z`` (never ``alpha / tau``), so extreme ``tau``/``alpha`` give the finite value.

How it stays exact (see ``docs/algorithm.md``): anchor on the k largest non-target scores
``T`` and their smallest member ``a``. With ``w_i = e^{(a - s_i)/(k tau)} <= 1`` on ``T`` and
``u_j = e^{(s_j - a)/(k tau)} <= 1`` on the rest ``R``,

.. math::

    A = \sum_{b=0}^{k} \sigma_b(w)\, e_b(u), \quad B = \sum_{b=1}^{k} \sigma_b(w)\, e_{b-1}(u).

Every term is a product of numbers at most 1 and non-negative: ``e_b(u)`` comes from the
subtraction-free tree of :mod:`smoothtopk.backends.polynomial`, ``sigma_b(w)`` and its
leave-one-out derivatives from :mod:`smoothtopk.backends.anchors`. The gradient of a rest class
is ``u_j P(u_j)``, a degree ``k - 1`` polynomial per row whose alternating terms are bounded
by binomials in ``k`` because ``u_j <= 1``: no series approximation and no switch to the hard loss.

Edge rules (shared by every backend, ``docs/math.md``): a row with fewer than ``k`` finite
non-target scores has loss 0 and gradient 0 (the limit); NaN or +inf scores give NaN; ignored
rows contribute exactly nothing. The module implements the backend contract of
:mod:`smoothtopk.backends` (``unavailable``, ``forward``, ``backward``).

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from smoothtopk.backends import pytorch
    >>> scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 0.2]])
    >>> target = torch.tensor([0, 2])
    >>> # k=1, tau=1, alpha=0, reduction="mean": cross-entropy
    >>> out, saved = pytorch.forward(scores, target, None, -100, 1, 1.0, 0.0, "mean")
    >>> torch.allclose(out, F.cross_entropy(scores, target))
    True
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._convention import reduce, row_gradients, row_weights
from . import _abi
from .anchors import _MAX_ENUMERATED as MAX_ENUMERATED
from .anchors import EXP_FLOOR, anchor_sums, exp_normal
from .anchors import LOG_ZERO as _LOG_ZERO
from .polynomial import normalized_elementary_symmetric, padded_width

NAME = "pytorch"
#: the caller checks the targets' range (asynchronously on accelerators)
CHECKS_TARGETS = False
FLOAT32_MAX_K = 10


#: torch releases whose inductor crashes the process (double free) compiling this path on the
#: CPU at k > 6 (tested: 2.11 crashes, 2.14 does not; the releases between are not tested)
INDUCTOR_CRASH_BEFORE = "2.14"


def unavailable(scores: torch.Tensor, k: int) -> str | None:
    """None on every device and floating dtype, except a ``torch.compile`` trace on the CPU at
    ``k > 6`` under a torch whose inductor crashes there: refused with the way out."""
    if k > MAX_ENUMERATED and scores.is_cpu and torch.compiler.is_compiling():
        if torch.__version__ < INDUCTOR_CRASH_BEFORE:
            return (
                f"torch {torch.__version__}'s inductor crashes the process compiling the PyTorch "
                f"path on the CPU at k > {MAX_ENUMERATED}: call the loss once before compiling "
                f"(the fused CPU kernel then serves compiled calls) or use torch >= "
                f"{INDUCTOR_CRASH_BEFORE}"
            )
    return None


def work_dtype(dtype: torch.dtype, k: int, tau: float) -> torch.dtype:
    """float64 for float64, for k > FLOAT32_MAX_K and when ``1 / (k tau)`` leaves float32's
    range; float32 otherwise (also for float16/bfloat16).

    In float32, the Horner sums of the gradient lose up to binomial(k, k/2) ulps, and
    ``e_b(u) / mass^b`` (about ``1 / b!``) leaves float32's range from b = 34 on.
    """
    if dtype == torch.float64 or k > FLOAT32_MAX_K:
        return torch.float64
    return torch.float64 if 1.0 / (k * tau) > torch.finfo(torch.float32).max else torch.float32


def forward(scores, target, weight, ignore_index, k, tau, alpha, reduction):
    """The backend contract's forward: ``(out, saved)``; see :mod:`smoothtopk.backends`."""
    work = scores.to(work_dtype(scores.dtype, k, tau))
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    pieces = _pieces(work, safe, k, tau, alpha)
    weights = row_weights(weight, safe, valid, work.dtype)
    losses = torch.where(valid, pieces.loss * weights, 0.0)
    out = reduce(losses, weights, reduction)
    out_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    # Never ``out.to(out_dtype)`` when the dtype is already right: that no-op ``to`` is an
    # alias of a graph intermediate, and torch 2.11's compile of the autograd.Function around
    # it then drops the incoming gradient (all-zero gradients, issue #19).
    return (out if out.dtype == out_dtype else out.to(out_dtype)), (weights, *pieces[1:])


def backward(grad_out, scores, target, weight, ignore_index, saved, k, tau, alpha, reduction):
    """The backend contract's backward: ``dL/dscores`` from the saved factors."""
    weights, *factors, live = saved
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    row_grad = row_gradients(grad_out.to(weights.dtype), weights, reduction)
    pieces = _Pieces(None, *factors, live)
    return gradient(pieces, safe, valid, row_grad, scores.shape[1]).to(scores.dtype)


def recorded_backward(grad_out, scores, target, weight, ignore_index, k, tau, alpha, reduction):
    """The gradient from recomputed factors with recorded operations (double backward)."""
    work = scores.to(work_dtype(scores.dtype, k, tau))
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    work = torch.where(valid[:, None], work, 0.0)  # no NaN of an ignored row reaches autograd
    pieces = _pieces(work, safe, k, tau, alpha)
    weights = row_weights(weight, safe, valid, work.dtype)
    row_grad = row_gradients(grad_out.to(work.dtype), weights, reduction)
    return gradient(pieces, safe, valid, row_grad, scores.shape[1]).to(scores.dtype)


def _recorded_backward_op(
    grad_out, scores, target, weight, ignore_index, k, tau, alpha, reduction, alpha_per_class
):
    """``smoothtopk::recorded_backward`` (:mod:`._abi`), the double backward of the C++
    ``cpu_loss``: :func:`recorded_backward`, per-class margins as the operator passes them."""
    alpha = alpha if alpha_per_class is None else alpha_per_class
    return recorded_backward(grad_out, scores, target, weight, ignore_index, k, tau, alpha,
                             reduction)  # fmt: skip


torch.library.impl(
    f"{_abi.NAMESPACE}::recorded_backward", "CompositeImplicitAutograd", _recorded_backward_op
)


def _poison(x: torch.Tensor) -> torch.Tensor:
    """0 where ``x`` is finite, NaN where it is +-inf or NaN: +inf scores give NaN, as in
    ``F.cross_entropy`` (the smooth loss itself would have a finite limit there)."""
    x = x.clamp_min(0.0)  # -inf scores are legitimate (a class ruled out), as in cross-entropy
    return x - x


class _Pieces(NamedTuple):
    loss: torch.Tensor  # (M,)
    slope: torch.Tensor  # (M,) dL/d(argument of the softplus) / k = sigmoid(...) / k
    rest: torch.Tensor  # (M, C) u_j for j in R, 0 on the anchors T and on the target
    rest_coefficients: torch.Tensor  # (M, k) D_m: d/dz_j (log A - log B) = u_j sum_m (-u_j)^m D_m
    anchor_gradient: torch.Tensor  # (M, k) d/dz_i (log A - log B) for i in T
    anchor_index: torch.Tensor  # (M, k) the classes of T
    live: torch.Tensor  # (M,) False where fewer than k non-target scores are finite (loss 0)


def _anchors(scores: torch.Tensor, target: torch.Tensor, k: int):
    """The k largest scores other than the target, their classes and whether the k-th of them
    is finite: the k + 1 largest, less the target (or the last of them), without a copy."""
    candidates, candidate_index = scores.topk(k + 1, dim=1)
    candidates = candidates.masked_fill(candidate_index == target, float("-inf"))
    top, order = candidates.topk(k, dim=1)
    return top, candidate_index.gather(1, order)


def _rest(scores, anchor, anchor_index, target, scale, differentiable):
    """``u_j = exp((s_j - a) / (k tau)) <= 1``, zero on the anchors and on the target, padded
    with zero columns to the tree's width (in one buffer, in place, without autograd).

    exp of arguments below the normal range is many times slower on CPUs; those u_j are
    negligible against the e_0 = 1 of the sums and are exactly 0 here, as the u_j of classes
    ruled out by -inf: their gradient is 0 (NaN under an infinite weight), as cross-entropy's.
    """
    floor = EXP_FLOOR[scores.dtype]
    if differentiable:
        argument = (scores - anchor) * scale
        rest = torch.exp(torch.where(argument > floor, argument, -torch.inf))
        return rest.scatter(1, anchor_index, 0.0).scatter(1, target, 0.0)
    rows, classes = scores.shape
    rest = scores.new_empty(rows, padded_width(classes))
    body = rest[:, :classes]
    body.copy_(scores).sub_(anchor).mul_(scale)
    torch.nn.functional.threshold_(body, floor, -torch.inf).exp_()
    rest[:, classes:].zero_()
    body.scatter_(1, anchor_index, 0.0).scatter_(1, target, 0.0)
    return rest


def _pieces(scores: torch.Tensor, target: torch.Tensor, k: int, tau: float, alpha):
    """Loss and gradient factors of every row; ``alpha`` a float or per-class margins ``(C,)``.

    Without autograd (the forward) the large ``(M, C)`` work is done in place in one buffer;
    with autograd (double backward) the same operations run out of place.
    """
    differentiable = torch.is_grad_enabled() and scores.requires_grad
    scale = 1.0 / (k * tau)
    if isinstance(alpha, torch.Tensor):  # per-class margins: row i's margin is alpha[t_i]
        alpha = alpha.to(scores.dtype)[target][:, None]
    target = target[:, None]
    true_score = scores.gather(1, target)
    top, anchor_index = _anchors(scores, target, k)
    # a NaN or +inf score makes the row NaN, even when its k-th other score is -inf
    poisoned = torch.isnan(_poison(top.sum(dim=1, keepdim=True) + true_score))
    live = ~(torch.isneginf(top[:, -1:]) & torch.isfinite(true_score)) | poisoned
    if differentiable:  # rows of loss 0 computed on zeros: no inf - inf reaches autograd
        scores = torch.where(live, scores, 0.0)
        true_score = scores.gather(1, target)
        top, anchor_index = _anchors(scores, target, k)
    anchor = top[:, -1:]
    rest = _rest(scores, anchor, anchor_index, target, scale, differentiable)
    # e_b(u) / mass^b with mass = max(1, sum u): in range for any n (undone in log space).
    scaled, log_mass = normalized_elementary_symmetric(rest, k)
    # log e_b(u) - k log_mass and, for B, log e_{b-1}(u) - (k - 1) log_mass: the two
    # normalisations keep log A and log B small, so their difference does not cancel.
    degrees = torch.arange(1 - k, 1, device=scores.device, dtype=scores.dtype)
    log_e = torch.where(
        scaled > 0, torch.log(scaled.clamp_min(torch.finfo(scores.dtype).tiny)), _LOG_ZERO
    )
    log_e = torch.cat([-k * log_mass, log_e + degrees * log_mass], dim=1)

    # Anchors: log sigma_b(w), log A, log B and the anchors' inclusions, in log space.
    log_w = ((anchor - top) * scale).clamp_min(_LOG_ZERO)
    log_e_shifted = torch.cat([torch.full_like(log_mass, _LOG_ZERO), log_e[:, :-1] + log_mass], 1)
    log_sigma, log_totals, inclusions = anchor_sums(log_w, torch.stack([log_e, log_e_shifted]))
    log_a, log_b = log_totals[0], log_totals[1]

    # tau z = alpha + (a - s_y) / k + tau (log A - log B): no alpha / tau to overflow
    margin = alpha + (anchor - true_score) / k + tau * (log_mass + log_a - log_b)
    margin = margin.squeeze(1) + _poison(top.sum(dim=1) + true_score.squeeze(1))
    live = live.squeeze(1)
    softplus = margin.clamp_min(0.0) + tau * torch.log1p(torch.exp(-margin.abs() / tau))
    loss = torch.where(live, softplus, 0.0)
    slope = torch.where(live, torch.sigmoid(margin / tau) / k, 0.0)

    anchor_gradient = inclusions[1] - inclusions[0]  # d/dz_i = -w_i d/dw_i (log A - log B)
    rest_coefficients = _rest_coefficients(log_sigma, log_e, log_a) - _rest_coefficients(
        log_sigma, log_e_shifted, log_b
    )
    return _Pieces(loss, slope, rest, rest_coefficients, anchor_gradient, anchor_index, live)


def _rest_coefficients(log_sigma, log_e, log_total) -> torch.Tensor:
    r"""``C_m = sum_{b > m} sigma_b(w) e_{b-1-m}(u) / total``, m = 0..k-1; terms <= C(k, m+1)."""
    k = log_sigma.shape[1] - 1
    b = torch.arange(k + 1, device=log_sigma.device)
    m = torch.arange(k, device=log_sigma.device)
    index = b[None, :] - 1 - m[:, None]  # (k, k + 1): degree of e paired with sigma_b
    valid = (index >= 0).to(log_e.dtype)
    gathered = log_e.index_select(1, index.clamp_min(0).flatten()).view(-1, k, k + 1)
    terms = exp_normal(log_sigma[:, None, :] + gathered - log_total[:, :, None])
    return (terms * valid).sum(dim=2)


def gradient(pieces: _Pieces, target, valid, grad_loss: torch.Tensor, classes: int):
    """dL/ds from the factors: rest classes by Horner's rule in ``u_j``, anchors, then target.
    A row that is not ``pieces.live`` (no finite k-th score) gets ``0 * dOut/dl_row``: 0, or NaN
    when that is not finite (a NaN weight, a mean over a total weight of 0), as cross-entropy;
    an ignored row (not ``valid``) gets exactly 0.

    In place in one ``(M, C)`` buffer unless autograd records (double backward).
    """
    factor = (pieces.slope * grad_loss)[:, None]  # slope = 0 on rows that are not live
    coefficients = pieces.rest_coefficients * factor
    anchors = pieces.anchor_gradient * factor
    u = pieces.rest[:, :classes]
    k = coefficients.shape[1]
    target = target[:, None]
    keep = pieces.live[:, None] & valid[:, None]
    # 0 * dOut/dl_row: 0, or NaN where that is not finite (an infinite or NaN weight)
    zero_or_nan = factor * 0.0
    # the other rows' value: zero_or_nan (slope = 0 there) if counted, else exactly 0
    fill = torch.where(valid[:, None], zero_or_nan, 0.0)
    # the target's entry: -factor, NaN for an infinite factor, as F.cross_entropy
    on_target = zero_or_nan - factor
    if torch.is_grad_enabled():
        horner = coefficients[:, k - 1 :]
        for m in range(k - 2, -1, -1):
            horner = torch.addcmul(coefficients[:, m : m + 1], u, horner, value=-1.0)
        direction = (u * horner).scatter(1, pieces.anchor_index, anchors)
        return torch.where(keep, direction.scatter(1, target, on_target), fill)
    if k == 1:
        direction = u * coefficients
    else:
        horner = torch.addcmul(
            coefficients[:, k - 2 : k - 1], u, coefficients[:, k - 1 :], value=-1.0
        )
        for m in range(k - 3, -1, -1):
            torch.addcmul(coefficients[:, m : m + 1], u, horner, value=-1.0, out=horner)
        direction = horner.mul_(u)
    direction.scatter_(1, pieces.anchor_index, anchors).scatter_(1, target, on_target)
    return torch.where(keep, direction, fill, out=direction)  # one pass, in place
