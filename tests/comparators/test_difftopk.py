"""The optional difftopk adapter: skipped unless difftopk and diffsort are installed."""

from __future__ import annotations

import pytest
import torch

from smoothtopk.comparators import (
    DiffTopkCrossEntropyLoss,
    difftopk_available,
    difftopk_cross_entropy_loss,
)
from smoothtopk.registry import comparators

pytestmark = pytest.mark.skipif(
    not difftopk_available(),
    reason="optional packages difftopk and diffsort are not installed (pip install difftopk)",
)


def _published(**kwargs):
    from smoothtopk.comparators.difftopk_adapter import _import_difftopk

    return _import_difftopk().TopKCrossEntropyLoss(**kwargs)


def test_registered():
    assert comparators()["difftopk"] is DiffTopkCrossEntropyLoss


@pytest.mark.parametrize("m", [None, 6])
def test_mean_equals_published_module(m):
    n = 10
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, n, generator=gen, requires_grad=True)
    y = torch.randint(0, n, (8,), generator=gen)
    p_k = [0.5, 0.0, 0.5]
    published = _published(
        diffsort_method="odd_even", inverse_temperature=2.0, p_k=p_k, n=n, m=m,
        distribution="cauchy", art_lambda=0.5, device="cpu", top1_mode="sm",
    )  # fmt: skip
    ours = difftopk_cross_entropy_loss(x, y, k=3, p_k=p_k, m=m)
    theirs = published(x, y)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, x)[0])


def test_contract():
    n = 8
    x = torch.randn(6, n, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, -100, 4, 7])
    w = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    module = DiffTopkCrossEntropyLoss(k=2, weight=w, reduction="none")
    per = module(x, y)
    assert per.dtype == torch.float64 and per[3] == 0
    plain = difftopk_cross_entropy_loss(x, torch.where(y < 0, 0, y), k=2, reduction="none")
    valid = y >= 0
    torch.testing.assert_close(per[valid], (plain * w[torch.where(valid, y, 0)])[valid])
    assert "p_k=(0.5, 0.5)" in repr(module)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p_k": [0.5, 0.4]}, ValueError, "p_k"),
        ({"p_k": [1.0]}, ValueError, "p_k"),
        ({"diffsort_method": "quick"}, ValueError, "diffsort_method"),
        ({"m": 2}, ValueError, "m"),
        ({"inverse_temperature": 0.0}, ValueError, "inverse_temperature"),
        ({"k": 8}, ValueError, "k"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs = {"k": 2, **kwargs}
    with pytest.raises(error, match=match):
        difftopk_cross_entropy_loss(torch.randn(3, 8), torch.tensor([0, 1, 2]), **kwargs)
