"""Grouped label noise, as in the paper's CIFAR-100 experiment (docs/experiments.md).

Each training label is, with probability ``p``, replaced by a label drawn uniformly from its
group (the true label included), so the expected effective flip rate is ``p * (1 - 1/g)`` for
groups of ``g`` classes (0.8 p for groups of 5). A noisy label always stays in the group of the
true label, so a classifier whose top-5 is exactly the true group is untouched by the noise.

Groups are either *consecutive* label indices (0-4, 5-9, ...: what the paper's public code did;
these are not CIFAR-100's superclasses) or the data set's *superclass* (semantic) groups.

The draw uses its own ``torch.Generator`` seeded with ``seed``: the same (labels, seed) give the
same noise whatever else the program does with random numbers. Both uniform draws are made for
every sample whatever ``p``, so with one seed the samples resampled at a lower ``p`` are a
subset of those resampled at a higher ``p`` (common random numbers across noise levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GROUPINGS = ("consecutive", "superclass")


@dataclass
class NoisyLabels:
    labels: torch.Tensor  #: the noisy labels (int64)
    flipped: torch.Tensor  #: bool mask: noisy label != clean label
    resampled: torch.Tensor  #: bool mask: the label was redrawn (possibly to itself)
    rate: float  #: the noise level p
    effective_rate: float  #: fraction of labels actually changed

    def summary(self) -> dict:
        return {
            "noise": self.rate,
            "resampled": int(self.resampled.sum()),
            "flipped": int(self.flipped.sum()),
            "total": int(self.labels.numel()),
            "effective_flip_rate": self.effective_rate,
        }


def check_rate(p) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p):
        raise ValueError(f"noise level must be a number in [0, 1], got {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noise level must be in [0, 1], got {p}")
    return float(p)


def make_groups(
    num_classes: int,
    grouping: str = "consecutive",
    group_size: int = 5,
    superclasses: torch.Tensor | None = None,
) -> torch.Tensor:
    """The group index of each class, shape ``(num_classes,)``."""
    if grouping == "consecutive":
        if group_size < 1:
            raise ValueError(f"group size must be >= 1, got {group_size}")
        return torch.arange(num_classes) // group_size
    if grouping == "superclass":
        if superclasses is None:
            raise ValueError(
                "this data set defines no superclasses; use --noise-groups consecutive"
            )
        groups = torch.as_tensor(superclasses, dtype=torch.int64)
        if groups.shape != (num_classes,):
            raise ValueError(f"superclasses must have shape ({num_classes},)")
        return groups
    raise ValueError(f"unknown noise grouping {grouping!r}; choose from {', '.join(GROUPINGS)}")


def add_grouped_noise(
    labels: torch.Tensor, p: float, groups: torch.Tensor, seed: int
) -> NoisyLabels:
    """Resample each label with probability ``p`` uniformly within its group."""
    p = check_rate(p)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    groups = torch.as_tensor(groups, dtype=torch.int64)
    num_groups = int(groups.max()) + 1
    sizes = torch.bincount(groups, minlength=num_groups)
    width = int(sizes.max())
    # members[g] lists the classes of group g in increasing order, padded with -1
    members = torch.full((num_groups, width), -1, dtype=torch.int64)
    order = torch.argsort(groups, stable=True)
    position = torch.arange(groups.numel()) - torch.cumsum(sizes, 0).sub(sizes)[groups[order]]
    members[groups[order], position] = order

    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(labels.numel(), generator=gen, dtype=torch.float64)
    v = torch.rand(labels.numel(), generator=gen, dtype=torch.float64)
    g = groups[labels]
    pick = torch.minimum((v * sizes[g]).long(), sizes[g] - 1)
    candidate = members[g, pick]
    resampled = u < p
    noisy = torch.where(resampled, candidate, labels)
    flipped = noisy != labels
    effective = float(flipped.double().mean()) if labels.numel() else 0.0
    return NoisyLabels(noisy, flipped, resampled, p, effective)
