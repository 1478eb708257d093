"""The loss and its gradient against extended-precision references over the exactness grid, on
every backend.

Bounds (the project's targets, ``exactness_grid.BOUNDS``): float32 loss error <= 1e-5 and
gradient error <= 1e-4, float64 <= 1e-10 for both, normalised as described in
``exactness_grid.py``; no NaN or Inf. Each backend is measured in the dtypes it computes
(Triton: float32); a backend run in Triton's interpreter gets the cells of
``exactness_grid.FEW_CELLS``, each on a quarter of its rows (``few_rows``), the others the
whole grid.
"""

import pytest
import torch

from backend_suite import ALL_BACKENDS, computes, few, only_some_when_interpreted, require
from exactness_grid import (
    ALPHAS,
    BOUNDS,
    FEW_CELLS,
    FEW_ROWS,
    KS,
    SCALES,
    SIZES,
    STRUCTURES,
    TAUS,
    _errors,
    _ours,
    cells,
    few_rows,
    grid_inputs,
    measure,
)
from reference import log_space_loss_and_grad

DTYPES = (torch.float64, torch.float32)


def _sizes():
    """``(backend, n)`` for every backend and the sizes of its cells."""
    for param in ALL_BACKENDS:
        backend = param.values[0]
        sizes = sorted({cell[0] for cell in FEW_CELLS}) if few(backend) else SIZES
        yield from (pytest.param(backend, n, marks=param.marks, id=f"{backend}-{n}") for n in sizes)


@pytest.mark.parametrize("every_backend, n", list(_sizes()), indirect=["every_backend"])
def test_grid(every_backend, n):
    dtypes = [dtype for dtype in DTYPES if computes(every_backend, dtype)]
    failures = []
    for cell in cells((n,), few=few(every_backend)):
        rows = few_rows(cell) if few(every_backend) else None
        for dtype, (loss_error, grad_error, non_finite) in measure(*cell, dtypes, rows).items():
            loss_bound, grad_bound = BOUNDS[dtype]
            if loss_error > loss_bound or grad_error > grad_bound or non_finite:
                failures.append((cell, dtype, loss_error, grad_error, non_finite))
    assert not failures, failures


def test_the_few_cells_cover_every_k_tau_alpha_structure_and_scale_of_the_grid():
    assert {k for _, k, _, _ in FEW_CELLS} == set(KS)
    assert {tau for _, _, tau, _ in FEW_CELLS} == set(TAUS)
    assert {alpha for _, _, _, alpha in FEW_CELLS} == set(ALPHAS)
    assert set(FEW_CELLS) <= set(cells()) and {min(SIZES), max(SIZES)} <= {c[0] for c in FEW_CELLS}
    pairs = {(row // 2 // len(SCALES), row // 2 % len(SCALES)) for row in FEW_ROWS}
    assert len(pairs) == len(FEW_ROWS) == len(STRUCTURES) * len(SCALES)  # each pair once
    for part in (lambda row: row // 2 // len(SCALES), lambda row: row // 2 % len(SCALES)):
        kinds = {(part(row), row % 2) for row in FEW_ROWS}  # random target or target on top
        assert len(kinds) == 2 * len({part(row) for row in FEW_ROWS})
    assert {row for cell in FEW_CELLS for row in few_rows(cell)} == set(FEW_ROWS)
    for cell in FEW_CELLS:  # every structure, both kinds of target, in each cell
        rows = few_rows(cell)
        assert {row // 2 // len(SCALES) for row in rows} == set(range(len(STRUCTURES)))
        assert {row % 2 for row in rows} == {0, 1}


@pytest.mark.parametrize(
    "n, k, spread",
    [(25, 20, None), (300, 20, None), (64, 40, None), (200, 40, 1.0), (1000, 48, 3.0)],
)
def test_large_k_against_reference(n, k, spread, every_backend):
    # k beyond the subset enumeration of the anchors (their inside-outside recursion) and
    # beyond the grid, on the grid's inputs or on Gaussian scores (spread = standard
    # deviation). The PyTorch implementation computes float32 inputs in float64 for k > 10
    # (float32 sums of ~1/b! underflow from b = 34 on); the fused kernel always sums in float64.
    require(every_backend, torch.float32, k)
    if n == 25:
        only_some_when_interpreted(
            every_backend, "n = 300 (k near n: test_triton_kernel's every k)"
        )
    if spread is None:
        scores, targets = grid_inputs(n, k)
    else:
        generator = torch.Generator().manual_seed(n + k)
        scores = torch.randn(8, n, generator=generator, dtype=torch.float64) * spread
        targets = torch.randint(0, n, (8,), generator=generator)
    if few(every_backend):  # the interpreter: 4 rows (4 structures; 4 of the Gaussian's 8)
        scores, targets = scores[::10], targets[::10]
    scores = scores.float().double()
    ref_loss, ref_grad = log_space_loss_and_grad(scores, targets, k, 0.5, 1.0)
    for dtype in [dtype for dtype in DTYPES if computes(every_backend, dtype, k)]:
        loss, grad = _ours(scores.to(dtype), targets, k, 0.5, 1.0)
        errors = _errors(scores, targets, k, 0.5, 1.0, dtype, loss, grad, ref_loss, ref_grad)
        loss_bound, grad_bound = BOUNDS[dtype]
        assert errors[0] <= loss_bound and errors[1] <= grad_bound and errors[2] == 0, errors
