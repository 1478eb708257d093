"""The long-tailed losses against independent computations: cross-entropy of logits shifted by
hand (Menon et al. 2021), per-row scalar-margin calls with LDAM margins computed by hand, and the
shared-noise reference of the smoothed calibrated hinge (the contract: tests/test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smoothtopk import smooth_topk_svm_loss
from smoothtopk.comparators import (
    LDAMSmoothTopkSVMLoss,
    LogitAdjustedCrossEntropyLoss,
    ldam_smooth_topk_svm_loss,
    ldam_smoothed_topk_calibrated_hinge_loss,
    logit_adjusted_cross_entropy,
)

from . import references as ref

COUNTS = [500, 120, 37, 9, 3, 1]


def _data(n=8, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    return s, torch.randint(0, c, (n,), generator=g)


def _hand_margins(counts, max_margin):
    return [max_margin * (min(counts) / n) ** 0.25 for n in counts]


@pytest.mark.parametrize("tau_la", [0.0, 1.0, 2.5])
def test_logit_adjusted_is_cross_entropy_of_hand_shifted_logits(tau_la):
    s, y = _data()
    y[2] = -100
    weight = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    shift = torch.tensor([tau_la * math.log(n / sum(COUNTS)) for n in COUNTS], dtype=torch.float64)
    a, b = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    counts = torch.tensor(COUNTS)
    for reduction in ("none", "sum", "mean"):
        got = logit_adjusted_cross_entropy(a, y, tau_la=tau_la, class_counts=counts,
                                           weight=weight, reduction=reduction)  # fmt: skip
        expected = F.cross_entropy(b + shift, y, weight=weight, reduction=reduction)
        torch.testing.assert_close(got, expected)
    got.backward()
    expected.backward()
    torch.testing.assert_close(a.grad, b.grad)
    pairs = zip(s.tolist(), y.tolist(), strict=True)
    rows = [ref.logit_adjusted_ce(r, t, tau_la, COUNTS) for r, t in pairs if t != -100]
    per_sample = logit_adjusted_cross_entropy(s, y, tau_la=tau_la, class_counts=COUNTS,
                                              reduction="none")  # fmt: skip
    torch.testing.assert_close(per_sample[y != -100], torch.tensor(rows, dtype=torch.float64))


def test_logit_adjustment_balanced_is_cross_entropy_and_moves_mass_to_the_tail():
    s, y = _data()
    plain = F.cross_entropy(s, y, reduction="none")
    torch.testing.assert_close(logit_adjusted_cross_entropy(s, y, reduction="none"), plain)
    torch.testing.assert_close(
        logit_adjusted_cross_entropy(s, y, class_counts=[4] * 6, reduction="none"), plain
    )
    # the rarest class's logit is lowered most: its samples pay more than under plain CE
    rare = y == 5
    adjusted = logit_adjusted_cross_entropy(s, y, class_counts=COUNTS, reduction="none")
    assert rare.any() and bool((adjusted[rare] > plain[rare]).all())


@pytest.mark.parametrize("max_margin", [0.0, 0.6, 2.0])
def test_ldam_smooth_loss_is_per_row_scalar_margins(max_margin):
    s, y = _data()
    margins = _hand_margins(COUNTS, max_margin)
    counts = torch.tensor(COUNTS)
    got = ldam_smooth_topk_svm_loss(s, y, k=2, tau=0.5, max_margin=max_margin,
                                    class_counts=counts, reduction="none")  # fmt: skip
    for i in range(len(y)):
        row = smooth_topk_svm_loss(s[i : i + 1], y[i : i + 1], k=2, tau=0.5,
                                   alpha=margins[y[i]], reduction="none")  # fmt: skip
        torch.testing.assert_close(got[i : i + 1], row)
    balanced = ldam_smooth_topk_svm_loss(s, y, k=2, tau=0.5, max_margin=max_margin)
    assert balanced == smooth_topk_svm_loss(s, y, k=2, tau=0.5, alpha=max_margin)


def test_ldam_smoothed_hinge_matches_the_shared_noise_reference():
    s, y = _data(n=5)
    margins = _hand_margins(COUNTS, 0.5)
    got = ldam_smoothed_topk_calibrated_hinge_loss(
        s, y, k=2, epsilon=0.7, n_samples=4, class_counts=torch.tensor(COUNTS), scale=2.0,
        generator=torch.Generator().manual_seed(3), reduction="none",
    )  # fmt: skip
    z = torch.randn((5, 6, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = [ref.smoothed_calibrated_hinge(s[i].tolist(), int(y[i]), 2, 0.7, z[i].tolist(),
                                              margin=margins[y[i]], scale=2.0)
                for i in range(5)]  # fmt: skip
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_modules_keep_counts_as_a_buffer():
    s, y = _data()
    module = LogitAdjustedCrossEntropyLoss(tau_la=1.0, class_counts=COUNTS)
    assert "class_counts" in dict(module.named_buffers())
    torch.testing.assert_close(
        module(s, y), logit_adjusted_cross_entropy(s, y, class_counts=torch.tensor(COUNTS))
    )
    ldam = LDAMSmoothTopkSVMLoss(k=2, class_counts=torch.tensor(COUNTS))
    assert "class_counts=<(6,) tensor>" in repr(ldam)
    assert ldam.state_dict()["class_counts"].tolist() == COUNTS
