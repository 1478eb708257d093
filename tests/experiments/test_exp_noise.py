import pytest
import torch

from smoothtopk import topk_accuracy
from smoothtopk.experiments.noise import add_grouped_noise, check_rate, make_groups

LABELS = torch.arange(100).repeat(500)  # 50,000 labels, 500 per class


@pytest.mark.parametrize("p", [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
def test_effective_flip_rate_is_0_8_p(p):
    noisy = add_grouped_noise(LABELS, p, make_groups(100), seed=0)
    # the draw may keep the true label: 1 in 5 resampled labels stays
    assert noisy.effective_rate == pytest.approx(0.8 * p, abs=0.01)
    assert noisy.resampled.double().mean().item() == pytest.approx(p, abs=0.01)
    assert noisy.effective_rate == noisy.flipped.double().mean().item()
    assert torch.equal(noisy.flipped, noisy.labels != LABELS)
    assert not (noisy.flipped & ~noisy.resampled).any()
    if p > 0:  # among resampled labels the new label is uniform over the 5 group members
        offsets = (noisy.labels - (LABELS // 5) * 5)[noisy.resampled]
        share = torch.bincount(offsets, minlength=5).double() / offsets.numel()
        assert torch.allclose(share, torch.full((5,), 0.2, dtype=torch.float64), atol=0.02)


def test_noise_stays_in_the_group():
    groups = make_groups(100)
    noisy = add_grouped_noise(LABELS, 1.0, groups, seed=1)
    assert torch.equal(groups[noisy.labels], groups[LABELS])


def test_perfect_top5_classifier_of_the_groups_is_untouched():
    groups = make_groups(100)
    noisy = add_grouped_noise(LABELS, 0.8, groups, seed=2)
    # scores: the 5 classes of the true group on top, in an arbitrary order
    scores = torch.rand(LABELS.numel(), 100)
    scores += 10 * (groups[None, :] == groups[LABELS][:, None])
    top1, top5 = topk_accuracy(scores, noisy.labels, k=(1, 5))
    assert top5.item() == 1.0
    clean1, clean5 = topk_accuracy(scores, LABELS, k=(1, 5))
    assert clean5.item() == 1.0 and top1.item() < 0.5


def test_superclass_groups():
    superclasses = torch.tensor([(7 * c) % 20 for c in range(100)])
    groups = make_groups(100, "superclass", superclasses=superclasses)
    noisy = add_grouped_noise(LABELS, 1.0, groups, seed=3)
    assert torch.equal(superclasses[noisy.labels], superclasses[LABELS])
    # consecutive groups would have moved labels across superclasses
    other = add_grouped_noise(LABELS, 1.0, make_groups(100), seed=3)
    assert not torch.equal(superclasses[other.labels], superclasses[LABELS])
    with pytest.raises(ValueError, match="superclasses"):
        make_groups(100, "superclass")


def test_unequal_group_sizes():
    groups = make_groups(7, group_size=3)  # groups of 3, 3 and 1
    labels = torch.arange(7).repeat(2000)
    noisy = add_grouped_noise(labels, 1.0, groups, seed=0)
    assert torch.equal(groups[noisy.labels], groups[labels])
    assert not noisy.flipped[labels == 6].any()  # a singleton group cannot flip


def test_own_seeded_generator_and_nesting():
    torch.manual_seed(123)
    a = add_grouped_noise(LABELS, 0.4, make_groups(100), seed=5)
    torch.manual_seed(456)
    torch.rand(10)
    b = add_grouped_noise(LABELS, 0.4, make_groups(100), seed=5)
    assert torch.equal(a.labels, b.labels)
    c = add_grouped_noise(LABELS, 0.4, make_groups(100), seed=6)
    assert not torch.equal(a.labels, c.labels)
    high = add_grouped_noise(LABELS, 0.8, make_groups(100), seed=5)
    assert not (a.resampled & ~high.resampled).any()


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.2", True])
def test_bad_rate(p):
    with pytest.raises(ValueError):
        check_rate(p)
