r"""Elementary symmetric polynomials, computed without subtraction.

For non-negative ``v_1..v_n`` the elementary symmetric polynomials are the coefficients of

.. math::  \prod_{j=1}^{n} (1 + v_j X) = \sum_{d=0}^{n} e_d(v) X^d .

:func:`elementary_symmetric` returns ``e_1..e_k`` (``e_0 = 1``) by multiplying the factors
pairwise in a balanced tree, truncating every product at degree ``k``: ``O(n k)`` work in
``ceil(log2 n)`` vectorised steps and no Python loop over ``n``. Only additions and
multiplications of non-negative numbers occur, so every coefficient carries a relative rounding
error of at most about ``2 k log2(n)`` units in the last place, whatever the inputs.

The caller keeps the values in range: with ``sum(v) <= 1`` every ``e_d(v) <= 1 / d!`` and no
intermediate can overflow.

Example:
    >>> import torch
    >>> elementary_symmetric(torch.tensor([[1.0, 2.0, 3.0]]), 2)
    tensor([[ 6., 11.]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def elementary_symmetric(v: torch.Tensor, k: int) -> torch.Tensor:
    """``e_1(v) .. e_k(v)`` over the last dimension of a non-negative ``v``: shape ``(..., k)``."""
    n = v.shape[-1]
    # Coefficient-major layout: coefficients[d - 1] holds e_d of every tree node, so each
    # update below is an elementwise operation on large contiguous planes.
    coefficients = v.unsqueeze(0)
    while n > 1:
        if n % 2:
            coefficients = F.pad(coefficients, (0, 1))
            n += 1
        left, right = coefficients[..., 0::2], coefficients[..., 1::2]
        coefficients = _multiply_truncated(left, right, k)
        n //= 2
    result = coefficients.squeeze(-1).movedim(0, -1)
    if result.shape[-1] < k:
        result = F.pad(result, (0, k - result.shape[-1]))
    return result


def _multiply_truncated(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Product of ``1 + sum_t a[t-1] X^t`` and ``1 + sum_t b[t-1] X^t`` up to degree ``k``."""
    degree = a.shape[0]
    out_degree = min(2 * degree, k)
    out = a.new_zeros((out_degree, *a.shape[1:]))
    out[:degree] = a + b
    for i in range(1, min(degree, out_degree - 1) + 1):
        # a_i X^i times b_j X^j for j = 1 .. min(degree, out_degree - i)
        count = min(degree, out_degree - i)
        out[i : i + count] += a[i - 1] * b[:count]
    return out
