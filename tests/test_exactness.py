"""The loss and its gradient against extended-precision references over the exactness grid.

Bounds (the project's targets): float32 loss error <= 1e-5 and gradient error <= 1e-4,
float64 <= 1e-10 for both, normalised as described in ``exactness_grid.py``; no NaN or Inf.
"""

import pytest
import torch

from exactness_grid import SIZES, cells, measure

BOUNDS = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-10)}


@pytest.mark.parametrize("n", SIZES)
def test_grid(n):
    failures = []
    for cell in cells((n,)):
        for dtype, (loss_error, grad_error, non_finite) in measure(*cell).items():
            loss_bound, grad_bound = BOUNDS[dtype]
            if loss_error > loss_bound or grad_error > grad_bound or non_finite:
                failures.append((cell, dtype, loss_error, grad_error, non_finite))
    assert not failures, failures
