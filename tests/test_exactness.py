"""The loss and its gradient against extended-precision references over the exactness grid.

Bounds (the project's targets): float32 loss error <= 1e-5 and gradient error <= 1e-4,
float64 <= 1e-10 for both, normalised as described in ``exactness_grid.py``; no NaN or Inf.
"""

import pytest
import torch

from exactness_grid import SIZES, cells, measure

pytestmark = pytest.mark.usefixtures("backend")  # the fused CPU kernel and the PyTorch code

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


@pytest.mark.parametrize(
    "n, k, spread",
    [(25, 20, None), (300, 20, None), (64, 40, None), (200, 40, 1.0), (1000, 48, 3.0)],
)
def test_large_k_against_reference(n, k, spread):
    # k beyond the subset enumeration of the anchors (their inside-outside recursion) and
    # beyond the grid, on the grid's inputs or on Gaussian scores (spread = standard
    # deviation). The PyTorch implementation computes float32 inputs in float64 for k > 10
    # (float32 sums of ~1/b! underflow from b = 34 on); the fused kernel always sums in float64.
    from exactness_grid import _errors, _ours, grid_inputs
    from reference import log_space_loss_and_grad

    if spread is None:
        scores, targets = grid_inputs(n, k)
    else:
        generator = torch.Generator().manual_seed(n + k)
        scores = torch.randn(8, n, generator=generator, dtype=torch.float64) * spread
        targets = torch.randint(0, n, (8,), generator=generator)
    scores = scores.float().double()
    ref_loss, ref_grad = log_space_loss_and_grad(scores, targets, k, 0.5, 1.0)
    for dtype in (torch.float64, torch.float32):
        loss, grad = _ours(scores.to(dtype), targets, k, 0.5, 1.0)
        errors = _errors(scores, targets, k, 0.5, 1.0, dtype, loss, grad, ref_loss, ref_grad)
        loss_bound, grad_bound = BOUNDS[dtype]
        assert errors[0] <= loss_bound and errors[1] <= grad_bound and errors[2] == 0, errors
