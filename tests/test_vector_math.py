"""The CPU kernels' branch-free math (``csrc/vector_math.h``) against mpmath, in ulps.

The fused kernels' exponentials and logarithms are these functions, not the C library's, so
that the loops over them vectorise (the 8-row tails, ``rest_weights``, the backward);
``smoothtopk::vector_math`` applies one of them element by element. Each is compared with
mpmath at 120 bits on random arguments spread over its whole domain (log-uniform magnitudes,
arguments near 1, powers of two) and at its edges, against the bounds docs/algorithm.md states:
2.5 ulps for the float64 exponential, 4 for the logarithms, 2 float ulps for the float
exponential (measured worst on x86-64 with FMA: 1.9, 3.3 and 2.9, 1.7; a build without FMA
rounds differently, hence the margin).
"""

import math

import mpmath
import numpy as np
import pytest
import torch

from smoothtopk.backends import cpu as cpu_kernel

#: worst error allowed, in units in the last place of the correctly rounded result
ULPS = {"exp_nonpositive": 2.5, "log_positive": 4.0, "log1p_nonnegative": 4.0}
REFERENCE = {"exp_nonpositive": mpmath.exp, "log_positive": mpmath.log,
             "log1p_nonnegative": mpmath.log1p}  # fmt: skip
EXP_FLOOR, EXP_FLOOR_FLOAT = -708.0, -87.0  # kExpFloor, and the float version's floor


@pytest.fixture(autouse=True)
def kernel():
    if cpu_kernel.load() is None:
        pytest.skip("the fused CPU kernel could not be built")


def probe(x, function):
    return torch.ops.smoothtopk.vector_math(x, function)


def ulp_errors(function, x: torch.Tensor) -> list[float]:
    """|ours - f(x)| / ulp(f(x)) per element, f(x) in mpmath at 120 bits."""
    ours = probe(x, function)
    errors = []
    with mpmath.workprec(120):
        for value, result in zip(x.tolist(), ours.tolist(), strict=True):
            exact = REFERENCE[function](mpmath.mpf(value))
            rounded = float(exact)
            unit = math.ulp(rounded) if rounded != 0.0 else math.ulp(0.0)
            errors.append(float(abs(mpmath.mpf(result) - exact) / unit))
    return errors


def arguments(function: str) -> torch.Tensor:
    rng = np.random.default_rng(sum(map(ord, function)))
    if function == "exp_nonpositive":  # (kExpFloor, 0]: the whole range, near 0, tiny
        parts = [-rng.uniform(0, -EXP_FLOOR, 3000), -rng.uniform(0, 1, 1000),
                 -(10.0 ** rng.uniform(-300, 0, 1000)), [0.0, -0.5, EXP_FLOOR]]  # fmt: skip
    elif function == "log_positive":  # positive normals: every exponent, near 1, powers of 2
        parts = [np.exp(rng.uniform(-708, 709, 3000)), 1 + rng.uniform(-1e-3, 1e-3, 1000),
                 2.0 ** rng.integers(-1022, 1024, 200), [2**0.5, 2**0.5 * (1 + 2**-52),
                 np.finfo(np.float64).tiny, np.finfo(np.float64).max, 1.0]]  # fmt: skip
    else:  # [0, inf): large, of order 1, tiny (log1p(x) ~ x)
        parts = [np.exp(rng.uniform(-700, 700, 3000)), rng.uniform(0, 2, 1000),
                 10.0 ** rng.uniform(-300, -8, 500), [0.0, 2**-52, 1.0, 2**0.5 - 1]]  # fmt: skip
    return torch.tensor(np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]))


@pytest.mark.parametrize("function", sorted(ULPS))
def test_float64_within_documented_ulps(function):
    errors = ulp_errors(function, arguments(function))
    assert max(errors) <= ULPS[function], (function, max(errors))


def test_float_exponential_within_two_float_ulps():
    """The float version (float32 scores' u_j): against the float64 exponential, in float32
    ulps of the result, over (-87, 0]."""
    rng = np.random.default_rng(1)
    x = np.concatenate([-rng.uniform(0, 87, 5000), -rng.uniform(0, 1, 2000), [0.0, -87.0]])
    x = x.astype(np.float32)
    ours = probe(torch.from_numpy(x), "exp_nonpositive").numpy().astype(np.float64)
    exact = np.exp(x.astype(np.float64))  # the float's exact exponential, to 1e-16
    unit = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert (np.abs(ours - exact) / unit).max() <= 2.0


@pytest.mark.parametrize(
    "dtype, floor", [(torch.float64, EXP_FLOOR), (torch.float32, EXP_FLOOR_FLOAT)]
)
def test_exponential_edges(dtype, floor):
    """e^0 = 1 exactly (also at -0), 0 below the floor and at -inf, NaN stays NaN."""
    x = torch.tensor([0.0, -0.0, floor * 1.0001, -1e30, -math.inf, math.nan], dtype=dtype)
    y = probe(x, "exp_nonpositive")
    assert y[:2].tolist() == [1.0, 1.0]
    assert y[2:5].tolist() == [0.0, 0.0, 0.0]
    assert math.isnan(y[5].item())


def test_logarithm_edges():
    """log 1 = 0 and log1p 0 = 0 exactly; log1p keeps a tiny x (no cancellation in 1 + x)."""
    assert probe(torch.tensor([1.0], dtype=torch.float64), "log_positive").item() == 0.0
    tiny = torch.tensor([0.0, 1e-300, 3e-20, 2**-60], dtype=torch.float64)
    assert probe(tiny, "log1p_nonnegative").tolist() == tiny.tolist()


@pytest.mark.parametrize(
    "x, function, message",
    [
        (torch.ones(3, dtype=torch.float64), "sin", "unknown function 'sin'|unknown function sin"),
        (torch.ones(3, dtype=torch.int64), "exp_nonpositive", "float64 or float32"),
        (torch.ones(3), "log_positive", "takes float64"),
    ],
)
def test_bad_arguments_raise_value_error(x, function, message):
    with pytest.raises(ValueError, match=message):
        probe(x, function)
