import itertools
import math

import pytest
import torch

from smoothtopk.backends.polynomial import elementary_symmetric


def brute_force(values, d):
    return sum(math.prod(c) for c in itertools.combinations(values, d))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("k", [1, 2, 3, 6, 20])
def test_matches_definition(n, k):
    v = torch.rand(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n * 7 + k))
    result = elementary_symmetric(v, k)
    assert result.shape == (4, k)
    for row, values in zip(result, v.tolist(), strict=True):
        expected = [brute_force(values, d) for d in range(1, k + 1)]
        torch.testing.assert_close(row, torch.tensor(expected, dtype=torch.float64))


def test_no_subtraction_means_small_relative_error_in_float32():
    # Wildly different magnitudes: a subtraction-based method would lose the small terms.
    v = torch.tensor([[1e-20, 1e-10, 1.0, 1e-3, 0.5, 1e-30, 0.25]], dtype=torch.float64)
    exact = elementary_symmetric(v, 5)
    ours = elementary_symmetric(v.float(), 5).double()
    assert ((ours - exact).abs() / exact).max() < 1e-6


def test_leading_dimensions_and_zero_padding():
    v = torch.rand(2, 3, 9)
    torch.testing.assert_close(
        elementary_symmetric(v, 4), elementary_symmetric(v.reshape(6, 9), 4).reshape(2, 3, 4)
    )
    padded = torch.cat([v, torch.zeros(2, 3, 5)], dim=-1)  # zeros contribute nothing
    torch.testing.assert_close(elementary_symmetric(padded, 4), elementary_symmetric(v, 4))


@pytest.mark.parametrize("n", [1, 100, 1000, 5000])
@pytest.mark.parametrize("k", [2, 5, 17, 20, 40])
def test_every_width_and_degree_terminates_and_matches_the_recursion(n, k):
    # The summation recurrence e_d += v_j e_{d-1}, in float64, one value at a time.
    v = torch.rand(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n + k))
    v = v / v.sum(dim=1, keepdim=True)  # sum 1: nothing overflows in the recurrence either
    expected = torch.zeros(2, k + 1, dtype=torch.float64)
    expected[:, 0] = 1
    for j in range(n):
        expected[:, 1:] = expected[:, 1:] + v[:, j : j + 1] * expected[:, :-1].clone()
    torch.testing.assert_close(elementary_symmetric(v, k), expected[:, 1:], rtol=1e-10, atol=1e-300)
