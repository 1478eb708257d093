r"""The k anchor classes: ``sigma_b(w)`` and its derivatives, in log space, without subtraction.

For the ``k`` anchors with weights ``w_i = e^{log_w_i} <= 1`` and adjoint vectors
``c^{(r)}_0..c^{(r)}_k`` (one per row ``r`` of a stack), :func:`anchor_sums` returns

* ``log sigma_b(w)`` for ``b = 0..k``;
* ``log T_r`` with ``T_r = sum_b sigma_b(w) c^{(r)}_b``;
* the inclusions ``w_i d T_r / d w_i / T_r`` (the expected membership of anchor ``i``).

Every quantity is a sum of non-negative terms formed in log space, so the leave-one-out
polynomials behind the derivatives are never obtained by subtraction. Two exact evaluations:
for ``k <= 6`` all ``2^k`` subsets of the anchors at once (a few large vectorised operations);
beyond, the inside-outside recursion (``O(k^2)`` per row in ``k`` sequential steps).

Example:
    >>> import torch
    >>> log_w = torch.log(torch.tensor([[0.5, 1.0]]))
    >>> log_sigma, log_total, inclusion = anchor_sums(log_w, torch.zeros(1, 1, 3))
    >>> log_sigma.exp()  # 1, w1 + w2, w1 * w2
    tensor([[1.0000, 1.5000, 0.5000]])
"""

from __future__ import annotations

import math

import torch

# Stands for log(0): finite, so that autograd (double backward) never meets inf - inf, and so
# negative that exp() of it and of its sums with log-weights is exactly 0.
LOG_ZERO = -1.0e30
_MAX_ENUMERATED = 6
# log of the smallest normal number: exp() of anything below is 20-50x slower on x86 CPUs
# (subnormal results), and such terms are negligible in every sum here.
EXP_FLOOR = {torch.float32: -87.0, torch.float64: -708.0}


def exp_normal(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` with results below the normal range raised to its floor (about 1e-38)."""
    return torch.exp(x.clamp_min(EXP_FLOOR[x.dtype]))


def logsumexp(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """``torch.logsumexp`` through :func:`exp_normal` (the shift carries no gradient)."""
    top = x.detach().amax(dim=dim, keepdim=True)
    result = top + torch.log(exp_normal(x - top).sum(dim=dim, keepdim=True))
    return result if keepdim else result.squeeze(dim)


def anchor_sums(log_w: torch.Tensor, log_adjoints: torch.Tensor):
    """``(log sigma (M, k+1), log totals (R, M, 1), inclusions (R, M, k))``.

    ``log_w`` is ``(M, k)``; ``log_adjoints`` is ``(R, M, k + 1)``.
    """
    if log_w.shape[1] <= _MAX_ENUMERATED:
        return _by_subsets(log_w, log_adjoints)
    return _by_recursion(log_w, log_adjoints)


def _subsets(k: int, device, dtype):
    codes = torch.arange(2**k, device=device)
    members = (codes[:, None] >> torch.arange(k, device=device)) & 1  # (2^k, k)
    return members.to(dtype), members.sum(dim=1)


def _groups_by_size(k: int, sizes: torch.Tensor) -> torch.Tensor:
    """``(k + 1, C(k, k // 2))`` subset codes of each size, padded with ``2^k``; built with
    device operations only (no tensor from a Python list: no host-to-device copy)."""
    degrees = torch.arange(k + 1, device=sizes.device)
    counts = (sizes[None, :] == degrees[:, None]).sum(dim=1)  # C(k, b)
    offsets = counts.cumsum(0) - counts
    by_size = torch.argsort(sizes, stable=True)
    slot = torch.arange(math.comb(k, k // 2), device=sizes.device)
    position = (offsets[:, None] + slot).clamp(max=2**k - 1)
    return torch.where(slot < counts[:, None], by_size[position], 2**k)


def _by_subsets(log_w, log_adjoints):
    k = log_w.shape[1]
    members, sizes = _subsets(k, log_w.device, log_w.dtype)
    log_products = log_w @ members.T  # (M, 2^k): log of the product over each subset
    # subsets grouped by size, padded with a column of log 0: (M, k + 1, C(k, k // 2))
    padded = torch.cat([log_products, torch.full_like(log_products[:, :1], LOG_ZERO)], 1)
    groups = _groups_by_size(k, sizes)
    grouped = padded.index_select(1, groups.flatten()).view(-1, *groups.shape)
    log_sigma = logsumexp(grouped, dim=-1)
    log_terms = log_products + log_adjoints.index_select(-1, sizes)  # (R, M, 2^k)
    log_totals = logsumexp(log_terms, dim=-1, keepdim=True)
    inclusions = exp_normal(log_terms - log_totals) @ members  # (R, M, k)
    return log_sigma, log_totals, inclusions


def _shift_up(x: torch.Tensor) -> torch.Tensor:
    """``y_b = x_{b-1}``, ``y_0 = log 0``."""
    return torch.cat([torch.full_like(x[..., :1], LOG_ZERO), x[..., :-1]], dim=-1)


def _by_recursion(log_w, log_adjoints):
    k = log_w.shape[1]
    rows = log_w.shape[0]
    # inside[i]: log sigma_b of the anchors before i
    inside = [torch.cat([log_w.new_zeros(rows, 1), log_w.new_full((rows, k), LOG_ZERO)], 1)]
    for i in range(k):
        inside.append(torch.logaddexp(inside[-1], _shift_up(inside[-1]) + log_w[:, i : i + 1]))
    log_sigma = inside[-1]
    log_totals = logsumexp(log_sigma + log_adjoints, dim=-1, keepdim=True)
    # outside: log of d total / d sigma_b of the anchors before i, normalised by the total
    outside = log_adjoints - log_totals
    terms = [None] * k
    for i in range(k - 1, -1, -1):
        terms[i] = inside[i][:, :-1] + log_w[:, i : i + 1] + outside[..., 1:]
        raised = torch.cat([outside[..., 1:], torch.full_like(outside[..., :1], LOG_ZERO)], -1)
        outside = torch.logaddexp(outside, raised + log_w[:, i : i + 1])
    inclusions = exp_normal(torch.stack(terms, dim=-2)).sum(dim=-1)  # (R, M, k)
    return log_sigma, log_totals, inclusions
