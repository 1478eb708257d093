"""Pieces shared by every data set: labelled subsets and seeded, balanced splits."""

from __future__ import annotations

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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: ``val_per_class`` held-out validation samples, then ``train_per_class`` (or all
    the rest when ``None``) training samples, drawn in a seeded random order.

    The validation set does not depend on ``train_per_class``, and smaller training subsets are
    contained in larger ones (the same seeded order per class).
    """
    targets = torch.as_tensor(targets, dtype=torch.int64)
    gen = torch.Generator().manual_seed(int(seed))
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
