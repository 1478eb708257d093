r"""The smooth top-k SVM loss :math:`L_{k,\tau}` with margin :math:`\alpha`: exact value, gradient.

.. math::

    L_{k,\tau}(s, y) = \tau \,\mathrm{softplus}\Big(\frac{\alpha}{\tau}
        + \log \sigma_k(x_{\setminus y}) - \log \sigma_{k-1}(x_{\setminus y})
        - \frac{s_y}{k\tau}\Big), \qquad x_j = e^{s_j / (k\tau)},

where :math:`\sigma_d` is the elementary symmetric polynomial of degree ``d`` over the scores
without the target. ``k = 1`` is the closed form
:math:`\tau \log\sum_j e^{(s_j + \alpha[j\ne y] - s_y)/\tau}` (cross-entropy when
``alpha = 0, tau = 1``), which the kernel below reduces to: the tree is a plain sum and the
anchor is the largest other score, so the target's gradient is ``-sigmoid(.)`` and never the
cancelling ``softmax_y - 1``. ``tau -> 0`` gives :func:`smoothtopk.topk_svm_loss`.

How it stays exact (see ``docs/algorithm.md``): anchor on the k largest non-target scores
``T`` and their smallest member ``a``. With ``w_i = e^{(a - s_i)/(k tau)} <= 1`` on ``T`` and
``u_j = e^{(s_j - a)/(k tau)} <= 1`` on the rest ``R``,

.. math::

    \frac{\sigma_k(x)}{\sigma_{k-1}(x)} = e^{a/(k\tau)} \frac{A}{B}, \quad
    A = \sum_{b=0}^{k} \sigma_b(w)\, e_b(u), \quad B = \sum_{b=1}^{k} \sigma_b(w)\, e_{b-1}(u).

Every term is a product of numbers at most 1 and non-negative: ``e_b(u)`` comes from the
subtraction-free tree of :mod:`smoothtopk.polynomial`, ``sigma_b(w)`` and its leave-one-out
derivatives from a k-step inside-outside recursion in log space. The gradient of a rest class is
``u_j P(u_j)``, a degree ``k - 1`` polynomial per row whose alternating terms are bounded by
binomials in ``k`` because ``u_j <= 1``: no series approximation and no switch to the hard loss.

Example:
    >>> import torch
    >>> from smoothtopk import smooth_topk_svm_loss
    >>> scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 0.2]], requires_grad=True)
    >>> loss = smooth_topk_svm_loss(scores, torch.tensor([0, 2]), k=2, tau=1.0, alpha=1.0)
    >>> loss.backward()
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import cpu_kernel
from ._reduction import classification_loss, working_dtype
from ._validation import check_k, check_non_negative, check_positive
from .anchors import EXP_FLOOR, anchor_sums, exp_normal
from .anchors import LOG_ZERO as _LOG_ZERO
from .polynomial import normalized_elementary_symmetric, padded_width


def smooth_topk_svm_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    k: int = 5,
    tau: float = 1.0,
    alpha: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Smooth top-k SVM loss :math:`L_{k,\tau}` with the calling convention of ``F.cross_entropy``.

    Args:
        input: scores (logits) of shape ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices of shape ``()``, ``(N)`` or ``(N, d1, ...)``, integer dtype.
        k: the top-k of interest, ``1 <= k < C``.
        tau: temperature ``> 0``; smaller is closer to the hard top-k hinge.
        alpha: margin ``>= 0``.
        weight, ignore_index, reduction: as in ``F.cross_entropy``.

    Returns:
        The loss; shape of ``target`` for ``reduction="none"``, else a scalar. float16 and
        bfloat16 inputs are computed in float32 and returned in the input dtype.
    """
    tau = check_positive(tau, "tau")
    alpha = check_non_negative(alpha, "alpha")

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        top = check_k(k, scores.shape[1])
        fused = cpu_kernel.applies(scores, top)  # reads float16/bfloat16 directly
        if not fused:
            scores = scores.to(_pytorch_dtype(scores.dtype, top))
        return _SmoothTopkSVM.apply(scores, safe_target, top, tau, alpha, fused)

    return classification_loss(
        per_sample, input, target, weight, ignore_index, reduction, low_precision_input=True
    )


FLOAT32_MAX_K = 10


def _pytorch_dtype(dtype: torch.dtype, k: int) -> torch.dtype:
    """The dtype of the PyTorch implementation: float32 for k <= FLOAT32_MAX_K, else float64.

    In float32, the Horner sums of the gradient lose up to binomial(k, k/2) ulps, and
    ``e_b(u) / mass^b`` (about ``1 / b!``) leaves float32's range from b = 34 on.
    """
    dtype = working_dtype(dtype)
    return torch.float64 if dtype == torch.float32 and k > FLOAT32_MAX_K else dtype


def _poison(x: torch.Tensor) -> torch.Tensor:
    """0 where ``x`` is finite, NaN where it is +-inf or NaN: +inf scores give NaN, as in
    ``F.cross_entropy`` (the smooth loss itself would have a finite limit there)."""
    x = x.clamp_min(0.0)  # -inf scores are legitimate (a class ruled out), as in cross-entropy
    return x - x


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)`` to full precision (``F.softplus`` switches to ``x`` above 20)."""
    return torch.logaddexp(x, torch.zeros_like(x))


class _Pieces(NamedTuple):
    loss: torch.Tensor  # (M,)
    slope: torch.Tensor  # (M,) dL/d(argument of the softplus) / k = sigmoid(...) / k
    rest: torch.Tensor  # (M, C) u_j for j in R, 0 on the anchors T and on the target
    rest_coefficients: torch.Tensor  # (M, k) D_m: d/dz_j (log A - log B) = u_j sum_m (-u_j)^m D_m
    anchor_gradient: torch.Tensor  # (M, k) d/dz_i (log A - log B) for i in T
    anchor_index: torch.Tensor  # (M, k) the classes of T


def _pieces(scores: torch.Tensor, target: torch.Tensor, k: int, tau: float, alpha: float):
    """Loss and gradient factors of every row.

    Without autograd (the forward) the large ``(M, C)`` work is done in place in one buffer;
    with autograd (double backward) the same operations run out of place.
    """
    differentiable = torch.is_grad_enabled() and scores.requires_grad
    rows, classes = scores.shape
    scale = 1.0 / (k * tau)
    target = target[:, None]
    true_score = scores.gather(1, target)
    # The k largest scores other than the target: the k + 1 largest, less the target (or the
    # last of them), without copying the score matrix.
    candidates, candidate_index = scores.topk(k + 1, dim=1)
    candidates = candidates.masked_fill(candidate_index == target, float("-inf"))
    top, order = candidates.topk(k, dim=1)
    anchor_index = candidate_index.gather(1, order)
    anchor = top[:, -1:]

    # Rest: u_j = exp((s_j - a) / (k tau)) <= 1, zero on the anchors and on the target.
    if differentiable:
        rest = torch.exp(((scores - anchor) * scale).clamp(min=EXP_FLOOR[scores.dtype]))
        rest = rest.scatter(1, anchor_index, 0.0).scatter(1, target, 0.0)
    else:
        rest = scores.new_empty(rows, padded_width(classes))
        body = rest[:, :classes]
        # exp of arguments below the normal range is many times slower on CPUs; those u_j
        # are negligible against the e_0 = 1 of the sums (and the row's gradient).
        torch.sub(scores, anchor, out=body).mul_(scale).clamp_(min=EXP_FLOOR[scores.dtype])
        body.exp_()
        rest[:, classes:].zero_()
        body.scatter_(1, anchor_index, 0.0).scatter_(1, target, 0.0)
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
    log_w = (anchor - top) * scale
    log_e_shifted = torch.cat([torch.full_like(log_mass, _LOG_ZERO), log_e[:, :-1] + log_mass], 1)
    log_sigma, log_totals, inclusions = anchor_sums(log_w, torch.stack([log_e, log_e_shifted]))
    log_a, log_b = log_totals[0], log_totals[1]

    argument = alpha / tau + (anchor - true_score) * scale + (log_mass + log_a - log_b)
    argument = argument.squeeze(1) + _poison(top.sum(dim=1) + true_score.squeeze(1))
    loss = tau * _softplus(argument)
    slope = torch.sigmoid(argument) / k

    anchor_gradient = inclusions[1] - inclusions[0]  # d/dz_i = -w_i d/dw_i (log A - log B)
    rest_coefficients = _rest_coefficients(log_sigma, log_e, log_a) - _rest_coefficients(
        log_sigma, log_e_shifted, log_b
    )
    return _Pieces(loss, slope, rest, rest_coefficients, anchor_gradient, anchor_index)


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


def _gradient(pieces: _Pieces, target: torch.Tensor, grad_loss: torch.Tensor, classes: int):
    """dL/ds from the factors: rest classes by Horner's rule in ``u_j``, anchors, then target.

    In place in one ``(M, C)`` buffer unless autograd records (double backward).
    """
    factor = (pieces.slope * grad_loss)[:, None]
    coefficients = pieces.rest_coefficients * factor
    anchors = pieces.anchor_gradient * factor
    u = pieces.rest[:, :classes]
    k = coefficients.shape[1]
    target = target[:, None]
    if torch.is_grad_enabled():
        horner = coefficients[:, k - 1 :]
        for m in range(k - 2, -1, -1):
            horner = torch.addcmul(coefficients[:, m : m + 1], u, horner, value=-1.0)
        direction = (u * horner).scatter(1, pieces.anchor_index, anchors)
        return direction.scatter(1, target, -factor)
    if k == 1:
        direction = u * coefficients
    else:
        horner = torch.addcmul(
            coefficients[:, k - 2 : k - 1], u, coefficients[:, k - 1 :], value=-1.0
        )
        for m in range(k - 3, -1, -1):
            torch.addcmul(coefficients[:, m : m + 1], u, horner, value=-1.0, out=horner)
        direction = horner.mul_(u)
    direction.scatter_(1, pieces.anchor_index, anchors)
    return direction.scatter_(1, target, -factor)


class _SmoothTopkSVM(torch.autograd.Function):
    """Per-row loss with a hand-written backward that keeps only ``O(N C)`` for the backward.

    ``fused``: the CPU kernel of :mod:`smoothtopk.cpu_kernel` computes forward and backward
    (scores in their own dtype, float64 inside); otherwise the PyTorch operations below do.
    The backward is made of differentiable operations; under ``create_graph=True`` it recomputes
    the factors from the saved scores so that double backward is exact as well.
    """

    @staticmethod
    def forward(ctx, scores, target, k, tau, alpha, fused):
        ctx.hyper = (k, tau, alpha)
        ctx.fused = fused
        if fused:
            loss, stats, anchor_index = torch.ops.smoothtopk.forward(scores, target, k, tau, alpha)
            ctx.save_for_backward(scores, target, stats, anchor_index)
            return loss.to(working_dtype(scores.dtype))
        pieces = _pieces(scores, target, k, tau, alpha)
        ctx.save_for_backward(scores, target, *pieces[1:])
        return pieces.loss

    @staticmethod
    def backward(ctx, grad_loss):
        scores, target, *factors = ctx.saved_tensors
        k, tau, _ = ctx.hyper
        if torch.is_grad_enabled():  # double backward: recompute with recorded operations
            work = scores.to(_pytorch_dtype(scores.dtype, k))
            pieces = _pieces(work, target, *ctx.hyper)
            grad = _gradient(pieces, target, grad_loss, scores.shape[1]).to(scores.dtype)
        elif ctx.fused:
            grad = torch.ops.smoothtopk.backward(grad_loss, scores, target, *factors, k, tau)
        else:
            grad = _gradient(_Pieces(None, *factors), target, grad_loss, scores.shape[1])
        return grad, None, None, None, None, None
