"""Each loss against a brute-force float64 reference on small inputs, ties included."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothtopk.comparators import (
    SmoothedTopkCalibratedHingeLoss,
    label_smoothing_cross_entropy,
    ldam_class_margins,
    smoothed_topk_calibrated_hinge_loss,
    topk_hinge_alpha_loss,
    topk_hinge_beta_loss,
    truncated_topk_entropy_loss,
)
from smoothtopk.registry import LOSSES

from . import references as ref


def _case(spec):
    """(functional, reference, extra keyword arguments) of a registered top-k comparator."""
    module, function = spec.reference.split(":")
    assert module == "comparators.references"
    extra = {"alpha": 0.7} if "alpha" in spec.options else {}
    return spec.functional, getattr(ref, function), extra


# the comparators with a reference and a k (every reference takes (s, y, k, ...))
CASES = {
    name: _case(spec)
    for name, spec in LOSSES.items()
    if spec.comparator and spec.reference and "k" in spec.options
}


def _check_rows(name, rows, targets, k):
    fn, reference, kwargs = CASES[name]
    s = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(targets)
    got = fn(s, y, k=k, reduction="none", **kwargs)
    expected = [reference(r, t, k, **kwargs) for r, t in zip(rows, targets, strict=True)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_matches_reference_random(name, n):
    gen = torch.Generator().manual_seed(n)
    rows = (torch.randn(6, n, generator=gen, dtype=torch.float64) * 2).tolist()
    targets = torch.randint(0, n, (6,), generator=gen).tolist()
    for k in range(1, n):
        _check_rows(name, rows, targets, k)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_with_ties(name):
    rows = [
        [1.0, 1.0, 1.0, 1.0, 1.0],  # everything tied
        [2.0, 0.0, 2.0, 0.0, 2.0],  # target tied with competitors
        [0.0, 3.0, 3.0, -1.0, 3.0],
        [1.0, 1.0, 0.0, 0.0, 0.0],
    ]
    for targets in ([0, 1, 2, 3], [4, 3, 1, 0]):
        for k in range(1, 5):
            _check_rows(name, rows, targets, k)


scores_with_ties = st.integers(2, 8).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-3, 3).map(float), min_size=n, max_size=n),
        st.integers(0, n - 1),
        st.integers(1, n - 1),
    )
)


@settings(max_examples=60, deadline=None)
@given(case=scores_with_ties, name=st.sampled_from(sorted(CASES)))
def test_matches_reference_hypothesis(case, name):
    s, y, k = case
    _check_rows(name, [s], [y], k)


def test_hinge_alpha_k1_is_crammer_singer():
    s = torch.randn(7, 6, dtype=torch.float64)
    y = torch.randint(0, 6, (7,))
    margins = 1.0 + s - s.gather(1, y[:, None])
    margins = margins.scatter(1, y[:, None], float("-inf"))
    expected = margins.max(dim=1).values.clamp_min(0)
    torch.testing.assert_close(topk_hinge_alpha_loss(s, y, k=1, reduction="none"), expected)
    torch.testing.assert_close(topk_hinge_beta_loss(s, y, k=1, reduction="none"), expected)


def test_beta_dominates_alpha():
    s = torch.randn(50, 9, dtype=torch.float64)
    y = torch.randint(0, 9, (50,))
    for k in (1, 3, 8):
        a = topk_hinge_alpha_loss(s, y, k=k, reduction="none")
        b = topk_hinge_beta_loss(s, y, k=k, reduction="none")
        assert bool((b >= a - 1e-12).all()) and bool((a >= 0).all())


def test_truncated_entropy_k1_is_cross_entropy():
    s = torch.randn(7, 6, dtype=torch.float64) * 5
    y = torch.randint(0, 6, (7,))
    torch.testing.assert_close(
        truncated_topk_entropy_loss(s, y, k=1, reduction="none"),
        torch.nn.functional.cross_entropy(s, y, reduction="none"),
    )


def test_truncated_entropy_large_scores_are_finite():
    s = torch.tensor([[1e4, -1e4, 0.0, 3e3]], dtype=torch.float32)
    out = truncated_topk_entropy_loss(s, torch.tensor([1]), k=2, reduction="none")
    assert torch.isfinite(out).all()
    # class 0 (s_j - s_y = 2e4) is forgiven; the rest give log(1 + e^{1e4} + e^{1.3e4}) = 1.3e4
    torch.testing.assert_close(out, torch.tensor([1.3e4]))


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_label_smoothing_matches_reference(eps):
    rows = (torch.randn(5, 4, dtype=torch.float64) * 3).tolist()
    targets = [0, 3, 1, 2, 3]
    got = label_smoothing_cross_entropy(
        torch.tensor(rows, dtype=torch.float64),
        torch.tensor(targets),
        label_smoothing=eps,
        reduction="none",
    )
    expected = [ref.label_smoothing_ce(r, t, eps) for r, t in zip(rows, targets, strict=True)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("margins", [None, [0.2, 0.5, 0.9, 0.1, 0.3]])
def test_smoothed_hinge_matches_reference_with_same_noise(margins):
    n, m, draws, k, eps, scale = 5, 4, 7, 2, 0.3, 2.0
    s = torch.randn(m, n, dtype=torch.float64)
    y = torch.tensor([0, 4, 2, 2])
    class_margins = None if margins is None else torch.tensor(margins, dtype=torch.float64)
    got = smoothed_topk_calibrated_hinge_loss(
        s, y, k=k, epsilon=eps, n_samples=draws, alpha=0.8, class_margins=class_margins,
        scale=scale, generator=torch.Generator().manual_seed(3), reduction="none",
    )  # fmt: skip
    z = torch.randn((m, n, draws), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = []
    for i in range(m):
        margin = 0.8 if margins is None else margins[y[i]]
        expected.append(
            ref.smoothed_calibrated_hinge(
                s[i].tolist(), int(y[i]), k, eps, z[i].tolist(), margin, scale
            )  # fmt: skip
        )
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_label_smoothing_equals_torch_without_weight():
    x = torch.randn(9, 6, dtype=torch.float64)
    y = torch.randint(0, 6, (9,))
    y[0] = -100
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            label_smoothing_cross_entropy(x, y, label_smoothing=0.2, reduction=reduction),
            torch.nn.functional.cross_entropy(x, y, reduction=reduction, label_smoothing=0.2),
        )


def test_ldam_class_margins():
    margins = ldam_class_margins([1, 16, 81], max_margin=0.6)  # 0.6 * (1, 1/2, 1/3)
    torch.testing.assert_close(margins, torch.tensor([0.6, 0.3, 0.2]))
    module = SmoothedTopkCalibratedHingeLoss(k=1, class_margins=margins, scale=2.0)
    assert "class_margins" in dict(module.named_buffers()) and "scale=2.0" in repr(module)
    assert torch.isfinite(module(torch.randn(9, 3), torch.randint(0, 3, (9,))))


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"class_counts": [0, 3]}, "class_counts"),
                          ({"class_counts": [1, 3], "max_margin": -1.0}, "max_margin")],
)  # fmt: skip
def test_ldam_class_margins_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ldam_class_margins(**kwargs)
