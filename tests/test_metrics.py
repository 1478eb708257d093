import pytest
import torch

from smoothtopk import TopkAccuracy, topk_accuracy
from smoothtopk.metrics import topk_correct


def brute_force_correct(scores, target, k):
    """Correct when fewer than k classes score strictly higher than the target."""
    return sum(
        1
        for row, t in zip(scores.tolist(), target.tolist(), strict=True)
        if sum(v > row[t] for v in row) < k
    )


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_with_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (50, 10), generator=generator).float()  # many ties
    target = torch.randint(0, 10, (50,), generator=generator)
    fractions = topk_accuracy(scores, target, k=(1, 2, 5, 10))
    for k, fraction in zip((1, 2, 5, 10), fractions, strict=True):
        assert fraction.item() == pytest.approx(brute_force_correct(scores, target, k) / 50)
    assert fractions[-1] == 1.0


def test_ignore_index_spatial_shape_and_nan():
    scores = torch.tensor([[[0.1, 0.9]], [[0.5, 0.5]], [[0.2, 0.8]]]).transpose(1, 2)  # (3, 2, 1)
    target = torch.tensor([[1], [-100], [0]])
    (top1,) = topk_accuracy(scores, target, k=1)
    assert top1.item() == pytest.approx(0.5)
    nan_row = torch.tensor([[float("nan"), 1.0]])
    assert topk_accuracy(nan_row, torch.tensor([0]), k=(1,))[0].item() == 0.0


def test_streaming_equals_one_batch_and_merges_exactly():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(103, 20, generator=generator)
    target = torch.randint(0, 20, (103,), generator=generator)
    whole = topk_accuracy(scores, target, k=(1, 5))
    first, second = TopkAccuracy(k=(1, 5)), TopkAccuracy(k=(1, 5))
    for start in range(0, 60, 7):
        first.update(scores[start : min(start + 7, 60)], target[start : min(start + 7, 60)])
    second.update(scores[60:], target[60:])
    merged = first.merge(second)
    correct, total = merged.counts()
    assert total.item() == 103 and correct.dtype == torch.int64
    result = merged.compute()
    assert result == {1: pytest.approx(whole[0].item()), 5: pytest.approx(whole[1].item())}
    assert correct.tolist() == topk_correct(scores, target, k=(1, 5))[0].tolist()
    with pytest.raises(ValueError, match="k="):
        merged.merge(TopkAccuracy(k=(1,)))


def test_empty_accumulator_is_nan():
    meter = TopkAccuracy(k=(1, 5))
    result = meter.compute()
    assert all(v != v for v in result.values())
