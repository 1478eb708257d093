import itertools
import math

import pytest
import torch

from smoothtopk.backends.anchors import _by_recursion, _by_subsets


def brute_force(w, c):
    """log sigma_b(w), log sum_b sigma_b(w) c_b and w_i d/dw_i (.) / (.) by enumeration."""
    k = len(w)
    sigma = [sum(math.prod(s) for s in itertools.combinations(w, b)) for b in range(k + 1)]
    total = sum(s * cb for s, cb in zip(sigma, c, strict=True))
    inclusion = []
    for i in range(k):
        others = w[:i] + w[i + 1 :]
        loo = [sum(math.prod(s) for s in itertools.combinations(others, b)) for b in range(k)]
        inclusion.append(sum(w[i] * loo[b - 1] * c[b] for b in range(1, k + 1)) / total)
    return [math.log(s) for s in sigma], math.log(total), inclusion


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6])
@pytest.mark.parametrize("strategy", [_by_subsets, _by_recursion])
def test_both_strategies_match_enumeration(k, strategy):
    generator = torch.Generator().manual_seed(k)
    log_w = -torch.rand(3, k, generator=generator, dtype=torch.float64) * 5
    log_w[:, -1] = 0.0
    adjoints = torch.randn(2, 3, k + 1, generator=generator, dtype=torch.float64)
    log_sigma, log_totals, inclusions = strategy(log_w, adjoints)
    for r in range(2):
        for m in range(3):
            expected = brute_force(log_w[m].exp().tolist(), adjoints[r, m].exp().tolist())
            torch.testing.assert_close(log_sigma[m], torch.tensor(expected[0], dtype=torch.float64))
            assert log_totals[r, m, 0].item() == pytest.approx(expected[1], rel=1e-12)
            torch.testing.assert_close(
                inclusions[r, m], torch.tensor(expected[2], dtype=torch.float64)
            )


def test_first_order_gradient_same_with_and_without_create_graph():
    # The forward's in-place path and the double-backward path compute the same gradient.
    from smoothtopk import smooth_topk_svm_loss

    x = torch.randn(5, 40, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 40, (5,))
    for k in (1, 3, 8):
        (plain,) = torch.autograd.grad(smooth_topk_svm_loss(x, y, k=k, tau=0.3), x)
        (recorded,) = torch.autograd.grad(
            smooth_topk_svm_loss(x, y, k=k, tau=0.3), x, create_graph=True
        )
        torch.testing.assert_close(plain, recorded.detach(), rtol=1e-12, atol=1e-14)
