"""The exactness grid: the library against float64 references over adversarial inputs.

Run as a script to print (or ``--write`` to a file) the markdown table of worst errors that
``docs/exactness.md`` shows; ``test_exactness.py`` runs the same grid and asserts the bounds.

Errors are normalised per row as the project's targets state:
* loss: ``|ours - ref| / (tau + alpha + |max_j s_j - s_y| / k)``;
* gradient: ``max_j |ours_j - ref_j| / max_j |ref_j|`` (the row's largest reference entry).
float32 results are compared with the reference evaluated at the float32-rounded scores.
The bounds of the project's targets are :data:`BOUNDS`.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field

import torch

from reference import brute_force_loss, log_space_loss_and_grad
from smoothtopk import smooth_topk_svm_loss

SIZES = (2, 3, 4, 6, 9, 20, 100, 1000)
KS = (1, 2, 3, 5, 10)
TAUS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
ALPHAS = (0.0, 1.0)
SCALES = (1e-3, 1.0, 1e2, 1e4)
STRUCTURES = ("random", "ties", "dominant", "leaders", "offset")
BRUTE_FORCE_MAX_N = 9
#: the targets (docs/exactness.md): (loss, gradient) errors per dtype, normalised as above
BOUNDS = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-10)}
#: the cells of a backend run in Triton's interpreter (a row costs ~0.1 s there): every k, tau
#: and alpha of the grid, the smallest and the largest n, each on its ``few_rows``
FEW_CELLS = (
    (2, 1, 10.0, 0.0),
    (6, 2, 1e-3, 1.0),
    (9, 3, 1e-2, 0.0),
    (20, 10, 1.0, 0.0),
    (100, 5, 0.1, 1.0),
    (1000, 1, 10.0, 1.0),
)
#: half of a cell's rows: each structure at each scale once, with its random target (the row
#: ``2 p``, ``p = structure * len(SCALES) + scale``) or with the target on top (``2 p + 1``),
#: alternating over both so that every structure and every scale has both kinds
FEW_ROWS = [
    2 * (s * len(SCALES) + c) + (s + c) % 2
    for s in range(len(STRUCTURES))
    for c in range(len(SCALES))
]


def few_rows(cell) -> list[int]:
    """The rows of a cell of FEW_CELLS: every other one of FEW_ROWS (every structure, at two
    of the scales, both kinds of target), the cells taking turns, so that they use them all."""
    return FEW_ROWS[FEW_CELLS.index(cell) % 2 :: 2]


def make_scores(structure: str, n: int, k: int, scale: float, generator: torch.Generator):
    """Two rows of one structure: random targets, then the target at the top score."""
    base = torch.randn(2, n, generator=generator, dtype=torch.float64)
    if structure == "random":
        scores = base * scale
    elif structure == "ties":
        scores = torch.round(base) * scale
        scores[1] = scale  # one row entirely tied
    elif structure == "dominant":
        scores = base * scale
        scores[:, 0] += 30.0 * scale
    elif structure == "leaders":
        scores = base * scale
        scores[:, : max(k - 1, 1)] = 20.0 * scale + 0.01 * scale * base[:, : max(k - 1, 1)]
    elif structure == "offset":
        scores = base * scale + 1e4
    else:
        raise ValueError(structure)
    targets = torch.randint(0, n, (2,), generator=generator)
    targets[1] = scores[1].argmax()
    return scores, targets


def grid_inputs(n: int, k: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed * 1000 + n * 10 + k)
    parts = [make_scores(s, n, k, c, generator) for s in STRUCTURES for c in SCALES]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _ours(scores, targets, k, tau, alpha):
    scores = scores.detach().clone().requires_grad_(True)
    loss = smooth_topk_svm_loss(scores, targets, k=k, tau=tau, alpha=alpha, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), scores)
    return loss.detach().double(), grad.double()


def _errors(scores64, targets, k, tau, alpha, dtype, loss, grad, ref_loss, ref_grad):
    true_score = scores64.gather(1, targets[:, None]).squeeze(1)
    gap = (scores64.max(dim=1).values - true_score).abs() / k
    loss_error = ((loss - ref_loss).abs() / (tau + alpha + gap)).max().item()
    row_scale = ref_grad.abs().max(dim=1).values
    # A row whose whole gradient is within a factor 1/eps of the dtype's smallest normal
    # number cannot be represented to relative precision; it is judged against that floor.
    row_scale = row_scale.clamp_min(torch.finfo(dtype).tiny / torch.finfo(dtype).eps)
    grad_error = ((grad - ref_grad).abs().max(dim=1).values / row_scale).max().item()
    non_finite = int((~torch.isfinite(loss)).sum() + (~torch.isfinite(grad)).sum())
    return loss_error, grad_error, non_finite


@dataclass
class Worst:
    """Worst errors over a part of the grid, per dtype."""

    values: dict = field(default_factory=dict)

    def add(self, key, loss_error, grad_error, non_finite):
        old = self.values.get(key, (0.0, 0.0, 0))
        self.values[key] = (
            max(old[0], loss_error),
            max(old[1], grad_error),
            old[2] + non_finite,
        )


def measure(
    n: int, k: int, tau: float, alpha: float, dtypes=(torch.float64, torch.float32), rows=None
):
    """``{dtype: (loss error, gradient error, non-finite count)}`` for one grid cell (its
    ``rows`` only, if given)."""
    scores, targets = grid_inputs(n, k)
    if rows is not None:
        scores, targets = scores[rows], targets[rows]
    # Both dtypes see the same float32-representable scores, so one reference serves both.
    scores = scores.float().double()
    ref_loss, ref_grad = log_space_loss_and_grad(scores, targets, k, tau, alpha)
    if n <= BRUTE_FORCE_MAX_N:
        ref_loss = torch.tensor(
            [
                brute_force_loss(row, int(t), k, tau, alpha)
                for row, t in zip(scores, targets, strict=True)
            ],
            dtype=torch.float64,
        )
    results = {}
    for dtype in dtypes:
        rounded = scores
        loss, grad = _ours(rounded.to(dtype), targets, k, tau, alpha)
        results[dtype] = _errors(
            rounded, targets, k, tau, alpha, dtype, loss, grad, ref_loss, ref_grad
        )
    return results


def cells(sizes=SIZES, few=False):
    """The grid's cells ``(n, k, tau, alpha)`` of these sizes; ``few``: those of FEW_CELLS."""
    if few:
        yield from (cell for cell in FEW_CELLS if cell[0] in sizes)
        return
    for n, k, tau, alpha in itertools.product(sizes, KS, TAUS, ALPHAS):
        if k < n:
            yield n, k, tau, alpha


def run(sizes=SIZES) -> Worst:
    worst = Worst()
    for n, k, tau, alpha in cells(sizes):
        for dtype, errors in measure(n, k, tau, alpha).items():
            worst.add((dtype, k), *errors)
            worst.add((dtype, "n", n), *errors)
    return worst


def markdown(worst: Worst) -> str:
    lines = [
        "| k | float32 loss | float32 gradient | float64 loss | float64 gradient | NaN/Inf |",
        "|---|---|---|---|---|---|",
    ]
    for k in KS:
        f32, f64 = worst.values[(torch.float32, k)], worst.values[(torch.float64, k)]
        lines.append(
            f"| {k} | {f32[0]:.1e} | {f32[1]:.1e} | {f64[0]:.1e} | {f64[1]:.1e} "
            f"| {f32[2] + f64[2]} |"
        )
    lines += [
        "",
        "| n | float32 loss | float32 gradient | float64 loss | float64 gradient |",
        "|---|---|---|---|---|",
    ]
    for n in SIZES:
        f32, f64 = worst.values[(torch.float32, "n", n)], worst.values[(torch.float64, "n", n)]
        lines.append(f"| {n} | {f32[0]:.1e} | {f32[1]:.1e} | {f64[0]:.1e} | {f64[1]:.1e} |")
    count = sum(1 for _ in cells()) * len(STRUCTURES) * len(SCALES) * 2
    lines.append("")
    lines.append(
        f"{count} rows per dtype; worst over tau in {TAUS}, alpha in {ALPHAS}, "
        f"score scales {SCALES} and the structures {STRUCTURES}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="write the markdown table to this file")
    args = parser.parse_args()
    table = markdown(run())
    print(table)
    if args.write:
        with open(args.write, "w") as handle:
            handle.write(table + "\n")
