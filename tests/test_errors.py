"""Bad input: a ValueError or TypeError that names the argument (table-driven)."""

import pytest
import torch

from smoothtopk import (
    SmoothTopkSVMLoss,
    TopkSVMLoss,
    smooth_topk_svm_loss,
    topk_accuracy,
    topk_svm_loss,
)

X = torch.randn(4, 6)
Y = torch.tensor([0, 1, 2, 3])

CASES = [
    # (description, call, exception, text in the message)
    ("k < 1", lambda: smooth_topk_svm_loss(X, Y, k=0), ValueError, "k"),
    ("k = C", lambda: smooth_topk_svm_loss(X, Y, k=6), ValueError, "k"),
    ("k > C", lambda: smooth_topk_svm_loss(X, Y, k=9), ValueError, "k"),
    ("k not int", lambda: smooth_topk_svm_loss(X, Y, k=2.5), TypeError, "k"),
    ("k bool", lambda: smooth_topk_svm_loss(X, Y, k=True), TypeError, "k"),
    ("tau = 0", lambda: smooth_topk_svm_loss(X, Y, tau=0.0), ValueError, "tau"),
    ("tau < 0", lambda: smooth_topk_svm_loss(X, Y, tau=-1.0), ValueError, "tau"),
    ("tau inf", lambda: smooth_topk_svm_loss(X, Y, tau=float("inf")), ValueError, "tau"),
    ("tau nan", lambda: smooth_topk_svm_loss(X, Y, tau=float("nan")), ValueError, "tau"),
    ("tau str", lambda: smooth_topk_svm_loss(X, Y, tau="1"), TypeError, "tau"),
    ("alpha < 0", lambda: smooth_topk_svm_loss(X, Y, alpha=-0.1), ValueError, "alpha"),
    ("alpha nan", lambda: smooth_topk_svm_loss(X, Y, alpha=float("nan")), ValueError, "alpha"),
    ("alpha inf", lambda: topk_svm_loss(X, Y, alpha=float("inf")), ValueError, "alpha"),
    ("float target", lambda: smooth_topk_svm_loss(X, Y.float()), TypeError, "target"),
    ("bool target", lambda: smooth_topk_svm_loss(X, Y > 0), TypeError, "target"),
    ("integer input", lambda: smooth_topk_svm_loss(Y[:, None].expand(4, 6), Y), TypeError, "input"),
    ("input not tensor", lambda: smooth_topk_svm_loss(X.tolist(), Y), TypeError, "input"),
    ("target not tensor", lambda: smooth_topk_svm_loss(X, [0, 1, 2, 3]), TypeError, "target"),
    ("batch mismatch", lambda: smooth_topk_svm_loss(X, Y[:3]), ValueError, "target"),
    ("target 2-D", lambda: smooth_topk_svm_loss(X, Y[:, None]), ValueError, "target"),
    ("scalar input", lambda: smooth_topk_svm_loss(X[0, 0], Y[0]), ValueError, "input"),
    (
        "spatial mismatch",
        lambda: smooth_topk_svm_loss(torch.randn(2, 6, 3), torch.zeros(2, 4, dtype=torch.long)),
        ValueError,
        "target",
    ),
    (
        "target >= C",
        lambda: smooth_topk_svm_loss(X, torch.tensor([0, 1, 2, 6])),
        ValueError,
        "target",
    ),
    (
        "target < 0",
        lambda: smooth_topk_svm_loss(X, torch.tensor([0, -1, 2, 3])),
        ValueError,
        "target",
    ),
    ("reduction", lambda: smooth_topk_svm_loss(X, Y, reduction="avg"), ValueError, "reduction"),
    (
        "weight shape",
        lambda: smooth_topk_svm_loss(X, Y, weight=torch.ones(5)),
        ValueError,
        "weight",
    ),
    (
        "weight dtype",
        lambda: smooth_topk_svm_loss(X, Y, weight=torch.ones(6, dtype=torch.long)),
        TypeError,
        "weight",
    ),
    ("weight type", lambda: smooth_topk_svm_loss(X, Y, weight=[1.0] * 6), TypeError, "weight"),
    ("hard k = C", lambda: topk_svm_loss(X, Y, k=6), ValueError, "k"),
    ("hard reduction", lambda: topk_svm_loss(X, Y, reduction=None), ValueError, "reduction"),
    ("module tau", lambda: SmoothTopkSVMLoss(tau=0), ValueError, "tau"),
    ("module reduction", lambda: TopkSVMLoss(reduction="all"), ValueError, "reduction"),
    ("module weight", lambda: SmoothTopkSVMLoss(weight=[1.0]), TypeError, "weight"),
    ("module k at call", lambda: SmoothTopkSVMLoss(k=6)(X, Y), ValueError, "k"),
    ("accuracy k = 0", lambda: topk_accuracy(X, Y, k=(0,)), ValueError, "k"),
    ("accuracy k float", lambda: topk_accuracy(X, Y, k=(1.5,)), TypeError, "k"),
    ("accuracy target", lambda: topk_accuracy(X, Y.float()), TypeError, "target"),
]


@pytest.mark.parametrize("call, exception, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exception, text):
    with pytest.raises(exception, match=text):
        call()


def test_ignore_index_is_not_out_of_range():
    target = torch.tensor([0, -100, 2, 3])
    assert torch.isfinite(smooth_topk_svm_loss(X, target))
    assert torch.isfinite(smooth_topk_svm_loss(X, torch.tensor([0, 7, 2, 3]), ignore_index=7))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_propagates_like_cross_entropy(bad, backend):
    x = X.clone()
    x[1, 2] = bad
    ours = smooth_topk_svm_loss(x, Y, reduction="none")
    ce = torch.nn.functional.cross_entropy(x, Y, reduction="none")
    assert torch.isnan(ours[1]) and torch.isnan(ce[1])
    assert torch.isfinite(ours[[0, 2, 3]]).all()


def test_empty_batch_behaves_like_cross_entropy(backend):
    x, y = torch.randn(0, 6, requires_grad=True), torch.zeros(0, dtype=torch.long)
    for reduction in ("none", "sum", "mean"):
        ours = smooth_topk_svm_loss(x, y, reduction=reduction)
        ce = torch.nn.functional.cross_entropy(x, y, reduction=reduction)
        assert ours.shape == ce.shape
        torch.testing.assert_close(ours, ce, equal_nan=True)
    smooth_topk_svm_loss(x, y, reduction="sum").backward()
    assert x.grad.shape == (0, 6)
