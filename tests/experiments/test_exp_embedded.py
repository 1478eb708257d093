"""The embedded data set has CIFAR-100's index structure (issue #13): look-alike groups that are
not the consecutive label blocks, so the two noise groupings are two different experiments."""

import torch

from smoothtopk.experiments.datasets import build_data, embedded
from smoothtopk.experiments.noise import make_groups


def _class_means(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(1)
    return torch.stack([flat[labels == c].mean(0) for c in range(embedded.NUM_CLASSES)])


def _mean_distance(means: torch.Tensor, groups: torch.Tensor, same: bool) -> float:
    distance = torch.cdist(means, means)
    pairs = groups[:, None] == groups[None, :]
    pairs = pairs if same else ~pairs
    pairs.fill_diagonal_(False)
    return distance[pairs].mean().item()


def test_the_two_groupings_differ_and_hold_five_classes_each():
    bundle = build_data("embedded", seed=0)
    consecutive = make_groups(100, "consecutive", 5)
    superclass = make_groups(100, "superclass", 5, bundle.superclasses)
    for groups in (consecutive, superclass):
        assert torch.bincount(groups).tolist() == [5] * 20
    # at most a few pairs of classes share a group under both groupings
    both = (consecutive[:, None] == consecutive[None, :]) & (superclass[:, None] == superclass)
    assert both.sum().item() - 100 < 0.1 * 100 * 4


def test_look_alikes_are_the_superclasses_not_the_consecutive_blocks():
    data = embedded.generate(0)
    means = _class_means(data.test_images, data.test_labels)
    groups = embedded.superclasses()
    within, across = _mean_distance(means, groups, True), _mean_distance(means, groups, False)
    assert within < 0.75 * across  # classes of a superclass look alike
    blocks = torch.arange(100) // 5
    block_within = _mean_distance(means, blocks, True)
    assert block_within > 0.9 * _mean_distance(means, blocks, False)  # blocks do not


def test_the_grouping_is_fixed_for_every_data_seed():
    assert torch.equal(embedded.superclasses(), embedded.superclasses())
    assert torch.equal(build_data("embedded", seed=3).superclasses, embedded.superclasses())
