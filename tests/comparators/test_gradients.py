"""The smoothed hinge's Monte Carlo gradient and generator (gradcheck of every loss:
tests/test_contract.py)."""

from __future__ import annotations

import pytest
import torch

from smoothtopk.comparators import (
    smoothed_topk_calibrated_hinge_loss,
    topk_calibrated_hinge_loss,
)


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_smoothed_hinge_reproducible_with_generator():
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 5])
    values, grads = [], []
    for _ in range(2):
        loss = smoothed_topk_calibrated_hinge_loss(x, y, k=2, n_samples=8, generator=_seeded(7))
        (grad,) = torch.autograd.grad(loss, x)
        values.append(loss)
        grads.append(grad)
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    other = smoothed_topk_calibrated_hinge_loss(x, y, k=2, n_samples=8, generator=_seeded(8))
    assert not torch.equal(other, values[0])


def test_smoothed_hinge_generator_advances():
    gen = _seeded(0)
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    first = smoothed_topk_calibrated_hinge_loss(x, y, k=2, generator=gen)
    second = smoothed_topk_calibrated_hinge_loss(x, y, k=2, generator=gen)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("k", [1, 3])
def test_smoothed_hinge_tends_to_hard_hinge(k):
    x = torch.randn(20, 8, dtype=torch.float64)
    y = torch.randint(0, 8, (20,))
    hard = topk_calibrated_hinge_loss(x, y, k=k, reduction="none")
    errors = []
    for eps in (1e-1, 1e-3, 1e-6):
        soft = smoothed_topk_calibrated_hinge_loss(
            x, y, k=k, epsilon=eps, n_samples=16, generator=_seeded(), reduction="none"
        )
        errors.append((soft - hard).abs().max().item())
    assert errors[-1] < 1e-5
    assert errors[0] >= errors[1] >= errors[2]


def test_smoothed_hinge_gradient_is_the_perturbed_optimizer_estimate():
    """d/ds = scale·1[active]·((1/B) Σ_b e_{i_b} − e_y), i_b the (k+1)-th largest of s + εZ_b."""
    m, n, draws, k, eps = 6, 7, 9, 2, 0.7
    x = torch.randn(m, n, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, n, (m,))
    loss = smoothed_topk_calibrated_hinge_loss(
        x, y, k=k, epsilon=eps, n_samples=draws, generator=_seeded(4), reduction="sum"
    )
    (grad,) = torch.autograd.grad(loss, x)
    z = torch.randn((m, n, draws), generator=_seeded(4), dtype=torch.float64)
    perturbed = x.detach().unsqueeze(-1) + eps * z  # (M, C, B)
    index = perturbed.topk(k + 1, dim=1).indices[:, k, :]  # (M, B)
    expected = torch.zeros(m, n, dtype=torch.float64)
    expected.scatter_add_(1, index, torch.full((m, draws), 1.0 / draws, dtype=torch.float64))
    expected[torch.arange(m), y] -= 1.0
    smoothed = perturbed.topk(k + 1, dim=1).values[:, k, :].mean(dim=1)
    active = (1.0 + smoothed - x.detach().gather(1, y[:, None]).squeeze(1)) > 0
    torch.testing.assert_close(grad, expected * active[:, None])


def test_smoothed_hinge_matches_pytopk_given_the_same_noise():
    pytopk_functional = pytest.importorskip(
        "pytopk.functional", reason="optional package pytopk is not installed"
    )
    from pytopk.noised_topk import _noised_topk

    m, n, draws, k, eps = 5, 6, 10, 2, 0.5
    x = torch.randn(m, n, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 5])
    ours = smoothed_topk_calibrated_hinge_loss(
        x, y, k=k, epsilon=eps, n_samples=draws, generator=_seeded(2)
    )
    z = torch.randn((m, n, draws), generator=_seeded(2))
    theirs = pytopk_functional.bal_noised_topk_loss(x, y, k, eps, _noised_topk, z)
    torch.testing.assert_close(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, x)
    (g_theirs,) = torch.autograd.grad(theirs, x)
    torch.testing.assert_close(g_ours, g_theirs)
