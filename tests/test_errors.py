"""Bad input of the metrics (table-driven), and non-finite scores. The losses' bad arguments
are one table for every loss in tests/test_contract.py."""

import pytest
import torch

from smoothtopk import smooth_topk_svm_loss, topk_accuracy

X = torch.randn(4, 6)
Y = torch.tensor([0, 1, 2, 3])

CASES = [
    # (description, call, exception, text in the message)
    ("accuracy k = 0", lambda: topk_accuracy(X, Y, k=(0,)), ValueError, "k"),
    ("accuracy k float", lambda: topk_accuracy(X, Y, k=(1.5,)), TypeError, "k"),
    ("accuracy target", lambda: topk_accuracy(X, Y.float()), TypeError, "target"),
]


@pytest.mark.parametrize("call, exception, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exception, text):
    with pytest.raises(exception, match=text):
        call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_propagates_like_cross_entropy(bad, every_backend):
    x = X.clone()
    x[1, 2] = bad
    ours = smooth_topk_svm_loss(x, Y, reduction="none")
    ce = torch.nn.functional.cross_entropy(x, Y, reduction="none")
    assert torch.isnan(ours[1]) and torch.isnan(ce[1])
    assert torch.isfinite(ours[[0, 2, 3]]).all()
