"""Pieces shared by every data set: labelled subsets, seeded balanced splits, and the
long-tailed protocol (the profile, its class order, the head/medium/tail thirds)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset


class LabeledSubset(Dataset):
    """``base[indices[i]]`` with its label replaced by ``targets[i]`` and ``transform`` applied.

    The base data set is loaded without a transform, so that one base (CIFAR-100's official
    training set, an ImageFolder) can give a training split with augmentation and a validation
    split without. ``targets`` may be replaced (label noise) without touching the base.
    """

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int] | torch.Tensor,
        targets: Sequence[int] | torch.Tensor,
        transform: Callable | None = None,
    ):
        self.base = base
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        if self.indices.shape != self.targets.shape or self.indices.dim() != 1:
            raise ValueError("indices and targets must be 1-D and of the same length")
        self.transform = transform

    def __len__(self) -> int:
        return self.indices.numel()

    def __getitem__(self, i: int):
        x, _ = self.base[int(self.indices[i])]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])

    def with_targets(self, targets: torch.Tensor) -> LabeledSubset:
        """The same samples with other labels (e.g. noisy ones)."""
        return LabeledSubset(self.base, self.indices, targets, self.transform)


class TensorImages(Dataset):
    """In-memory images ``(N, C, H, W)`` and labels, indexed like a torchvision data set."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.targets = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i])


def random_split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into (train, validation), each sorted."""
    if not 0 < val_size < n:
        raise ValueError(f"validation size must be in (0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def balanced_split_indices(
    targets: torch.Tensor,
    num_classes: int,
    val_per_class: int,
    train_per_class: int | None,
    seed: int,
    train_seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: ``val_per_class`` held-out validation samples, then ``train_per_class`` (or all
    the rest when ``None``) training samples, drawn in a seeded random order.

    The validation set does not depend on ``train_per_class`` nor on ``train_seed``, and smaller
    training subsets are contained in larger ones (the same seeded order per class). With a
    ``train_seed`` other than ``seed``, the training samples are drawn from the rest in an order
    of their own (a generator seeded with ``train_seed``): the subsample varies, validation
    stays; with ``train_seed`` None or equal to ``seed``, one order draws both (as before
    ``train_seed`` existed).
    """
    targets = torch.as_tensor(targets, dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed))
    own = train_seed is not None and int(train_seed) != int(seed)
    train_gen = torch.Generator().manual_seed(int(train_seed)) if own else None
    train, val = [], []
    for c in range(num_classes):
        members = (targets == c).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        need = val_per_class + (1 if train_per_class is None else train_per_class)
        if members.numel() < need:
            raise ValueError(
                f"class {c} has {members.numel()} training images, fewer than the "
                f"{val_per_class} validation + {train_per_class or 1} training images asked for"
            )
        val.append(members[:val_per_class])
        rest = members[val_per_class:]
        if train_gen is not None and train_per_class is not None:
            rest = rest[torch.randperm(rest.numel(), generator=train_gen)]
        train.append(rest if train_per_class is None else rest[:train_per_class])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def parse_subset(value: str | int | None, num_classes: int) -> int | None:
    """A training subset size (``"64k"``, ``128000``, ``"all"``) → images per class (None: all)."""
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        scale = 1
        if text.endswith("k"):
            text, scale = text[:-1], 1000
        try:
            total = int(float(text) * scale)
        except ValueError:
            raise ValueError(
                f"subset must be a number of images (e.g. 64k) or 'all', got {value!r}"
            ) from None
    else:
        total = int(value)
    if total < num_classes or total % num_classes:
        raise ValueError(
            f"subset must be a positive multiple of the number of classes ({num_classes}) "
            f"to be balanced, got {total}"
        )
    return total // num_classes


# -- the long-tailed protocol ---------------------------------------------------------------------

THIRDS = ("head", "medium", "tail")


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    r"""The images kept at each rank ``r`` of CIFAR-100-LT's exponential profile:

    .. math:: n_r = \max\bigl(1, \lfloor n_{\max} \, R^{-r/(C-1)} \rfloor\bigr),
       \qquad r = 0, \dots, C - 1,

    computed as the public CIFAR-100-LT code does (``int(n_max * (1/R) ** (r / (C-1)))``), so
    ``n_max=500, C=100`` gives its 10,847 images at R = 100 and 19,573 at R = 10.

    Shape:
        - output: a list of ``num_classes`` ints, non-increasing, ``n_0 = n_max``.

    Example:
        >>> long_tail_counts(500, 100, 100.0)[0], long_tail_counts(500, 100, 100.0)[-1]
        (500, 5)
        >>> sum(long_tail_counts(500, 100, 100.0))
        10847
    """
    if n_max < 1 or num_classes < 2:
        raise ValueError(
            f"the profile needs n_max >= 1 and num_classes >= 2, got {n_max} and {num_classes}"
        )
    if not (math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {ratio}")
    factor = 1.0 / ratio
    return [max(1, int(n_max * factor ** (r / (num_classes - 1)))) for r in range(num_classes)]


def long_tail_order(num_classes: int, seed: int) -> torch.Tensor:
    """``(C,)`` int64: the class at each rank of the profile (rank 0 keeps the most images), a
    seeded random permutation, so that the profile ignores any structure of the labels (the
    look-alike groups, consecutive label blocks). The first draw of :func:`long_tail_indices`.

    Example:
        >>> sorted(long_tail_order(5, seed=0).tolist())
        [0, 1, 2, 3, 4]
    """
    return torch.randperm(num_classes, generator=torch.Generator().manual_seed(int(seed)))


def long_tail_indices(
    targets: torch.Tensor, num_classes: int, ratio: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (sorted) into ``targets`` that make it long-tailed, and the class order.

    ``n_max`` is the smallest class count of ``targets`` (the most images every class can give,
    so the counts follow :func:`long_tail_counts` exactly; for a balanced split it is the
    per-class count). The class at rank ``r`` of :func:`long_tail_order` keeps ``n_r`` of its
    images: the first ``n_r`` of a seeded random order of them, drawn for every class whatever
    the ratio, so with one seed a larger ratio keeps a subset of what a smaller one keeps.
    ``ratio = 1`` cuts every class to ``n_max`` (an exactly balanced split).

    Shape:
        - targets: ``(N,)`` int64 class indices in ``[0, C)``.
        - output: ``(M,)`` int64 positions, ``M = sum(n_r)``; ``(C,)`` int64 class order.

    Example:
        >>> keep, order = long_tail_indices(torch.arange(3).repeat(4), 3, 4.0, seed=0)
        >>> torch.bincount(torch.arange(3).repeat(4)[keep])[order].tolist()
        [4, 2, 1]
    """
    targets = torch.as_tensor(targets, dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(num_classes, generator=gen)
    sizes = torch.bincount(targets, minlength=num_classes)
    if int(sizes.min()) < 1:
        missing = int((sizes == 0).nonzero()[0])
        raise ValueError(f"--imbalance-ratio needs every class in the training split; "
                         f"class {missing} has no training image")  # fmt: skip
    counts = long_tail_counts(int(sizes.min()), num_classes, ratio)
    kept = []
    for rank, c in enumerate(order.tolist()):
        members = (targets == c).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        kept.append(members[: counts[rank]])
    return torch.cat(kept).sort().values, order


def class_thirds(counts: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """``(C,)`` int64 in {0, 1, 2} (head, medium, tail): the classes sorted by training count,
    larger first, ties in ``order`` (the profile's class order; default: by class index); the
    class at sorted position ``i`` is in third ``floor(3 i / C)`` (100 classes: 34, 33, 33).

    Shape:
        - counts: ``(C,)`` training images per class; order: ``(C,)`` a permutation.
        - output: ``(C,)`` int64.

    Example:
        >>> class_thirds(torch.tensor([1, 9, 5, 5, 3, 7])).tolist()
        [2, 0, 1, 1, 2, 0]
    """
    counts = torch.as_tensor(counts, dtype=torch.int64)
    num = counts.numel()
    order = torch.arange(num) if order is None else torch.as_tensor(order, dtype=torch.int64)
    position = torch.empty(num, dtype=torch.int64)
    position[order] = torch.arange(num)  # tie-break: rank in the order
    ranked = sorted(range(num), key=lambda c: (-int(counts[c]), int(position[c])))
    thirds = torch.empty(num, dtype=torch.int64)
    thirds[torch.tensor(ranked, dtype=torch.int64)] = torch.arange(num) * 3 // num
    return thirds
