r"""Elementary symmetric polynomials, computed without subtraction.

For non-negative ``v_1..v_n`` the elementary symmetric polynomials are the coefficients of

.. math::  \prod_{j=1}^{n} (1 + v_j X) = \sum_{d=0}^{n} e_d(v) X^d .

:func:`normalized_elementary_symmetric` returns ``e_1..e_k`` (``e_0 = 1``) divided by
``mass**d`` with ``mass = max(1, sum v)``, so that every value is at most ``1/d!`` and nothing
overflows for any ``n``. The factors are multiplied pairwise in a balanced tree, truncating every
product at degree ``k``: ``O(n k)`` work in ``ceil(log2 n)`` vectorised steps and no Python loop
over ``n``. Only additions and multiplications of non-negative numbers occur, so every
coefficient carries a relative rounding error of at most about ``2 k log2(n)`` units in the last
place, whatever the inputs.

Large levels multiply coefficient planes (about ``k`` operations a level); once few nodes
remain, each level is one outer product and one matrix product with a constant 0/1 matrix.

Example:
    >>> import torch
    >>> e = elementary_symmetric(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), 2)
    >>> e.tolist()  # e_1 = 1 + 2 + 3, e_2 = 1*2 + 1*3 + 2*3
    [[6.0, 11.0]]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_SMALL = 8  # the matrix-product stage starts at 8 nodes of degree 5 (fewer for larger k)
_EVEN_NODES = 64  # padded widths halve evenly down to this many nodes
_SCALE_LEVEL = 3  # nodes of 2**3 values: their polynomials cannot overflow before scaling


def padded_width(n: int) -> int:
    """A width ``>= n`` that halves evenly down to at most ``_EVEN_NODES`` nodes (< 2 % larger)."""
    levels = max(0, math.ceil(math.log2(max(n, 1) / _EVEN_NODES)))
    block = 2**levels
    return -(-n // block) * block


def elementary_symmetric(v: torch.Tensor, k: int) -> torch.Tensor:
    """``e_1(v) .. e_k(v)`` over the last dimension of a non-negative ``v``: shape ``(..., k)``.

    In linear scale, so it can overflow for large sums; the loss uses
    :func:`normalized_elementary_symmetric`.
    """
    normalized, log_mass = normalized_elementary_symmetric(v, k)
    powers = torch.arange(1, k + 1, device=v.device, dtype=v.dtype)
    return normalized * torch.exp(log_mass * powers)


def normalized_elementary_symmetric(v: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e_d(v) / mass**d for d = 1..k, log(mass))`` with ``mass = max(1, sum(v))``.

    ``v`` has shape ``(..., n)``; results have shapes ``(..., k)`` and ``(..., 1)``. Zero
    entries of ``v`` (padding) change nothing. ``log(mass)`` carries no gradient: the
    normalisation is undone exactly by the caller, so it is a constant for autograd.
    """
    if k == 1:
        total = v.sum(dim=-1, keepdim=True)
        log_mass = torch.log(total.detach().clamp_min(1.0))
        return total * torch.exp(-log_mass), log_mass
    coefficients = v.unsqueeze(0)  # (degree, ..., nodes): coefficients[d - 1] holds e_d
    for _ in range(_SCALE_LEVEL):
        if coefficients.shape[-1] == 1:
            break
        coefficients = _level(coefficients, k)
    # e_1 of the nodes are partial sums: their total is sum(v), summed pairwise.
    log_mass = torch.log(coefficients[0].detach().sum(dim=-1, keepdim=True).clamp_min(1.0))
    powers = torch.arange(1, coefficients.shape[0] + 1, device=v.device, dtype=v.dtype)
    coefficients = coefficients * torch.exp(-log_mass * powers.view(-1, *[1] * v.dim()))
    budget = _SMALL * 36  # entries per row for the matrix-product stage
    while coefficients.shape[-1] > 1 and coefficients.shape[-1] * (k + 1) ** 2 > budget:
        coefficients = _level(coefficients, k)
    return _pairwise_products(coefficients, k), log_mass


def _level(coefficients: torch.Tensor, k: int) -> torch.Tensor:
    """One tree level: node ``i`` times node ``i + half`` (contiguous slices), truncated at k."""
    if coefficients.shape[-1] % 2:
        coefficients = F.pad(coefficients, (0, 1))
    half = coefficients.shape[-1] // 2
    left, right = coefficients[..., :half], coefficients[..., half:]
    degree = coefficients.shape[0]
    out_degree = min(2 * degree, k)
    if torch.is_grad_enabled():
        out = torch.cat([left + right, left.new_zeros((out_degree - degree, *left.shape[1:]))])
    else:
        out = left.new_empty((out_degree, *left.shape[1:]))
        torch.add(left, right, out=out[:degree])
        out[degree:].zero_()
    for i in range(1, min(degree, out_degree - 1) + 1):
        count = min(degree, out_degree - i)  # a_i X^i times b_j X^j, j = 1 .. count
        out[i : i + count].addcmul_(left[i - 1 : i], right[:count])
    return out


def _pairwise_products(coefficients: torch.Tensor, k: int) -> torch.Tensor:
    """Multiply the remaining node polynomials pairwise, one outer product and one matrix
    product per level: ``c_t = sum_{i + j = t} a_i b_j`` is the outer product ``a b^T`` summed
    along anti-diagonals, i.e. multiplied by a constant 0/1 matrix."""
    nodes = coefficients.movedim(0, -1).contiguous()  # (..., nodes, degree)
    nodes = torch.cat([torch.ones_like(nodes[..., :1]), nodes], dim=-1)
    nodes = F.pad(nodes, (0, k + 1 - nodes.shape[-1]))  # (..., nodes, k + 1) with e_0 = 1
    degrees = torch.arange(k + 1, device=nodes.device)
    antidiagonals = (degrees[:, None] + degrees[None, :]).reshape(-1, 1) == degrees[None, :]
    antidiagonals = antidiagonals.to(nodes.dtype)  # ((k+1)^2, k+1), truncating at degree k
    while nodes.shape[-2] > 1:
        if nodes.shape[-2] % 2:
            unit = F.pad(torch.ones_like(nodes[..., :1, :1]), (0, k))
            nodes = torch.cat([nodes, unit], dim=-2)
        half = nodes.shape[-2] // 2
        outer = nodes[..., :half, :, None] * nodes[..., half:, None, :]
        nodes = outer.flatten(-2) @ antidiagonals
    return nodes[..., 0, 1:]
