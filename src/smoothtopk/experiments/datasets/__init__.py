"""Data sets by name: ``embedded`` (the default), ``cifar100``, ``imagenet`` and ``folder``.

:func:`build_data` returns a :class:`DataBundle` with clean labels everywhere; label noise is
added afterwards to the training split only (see :mod:`..noise`). With ``imbalance_ratio``,
the training split of every data set is then made long-tailed by one function,
:func:`.common.long_tail_indices` (CIFAR-100-LT's profile); validation and test are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from . import cifar, embedded, imagefolder
from .common import (
    THIRDS,
    LabeledSubset,
    TensorImages,
    balanced_split_indices,
    class_thirds,
    long_tail_indices,
    parse_subset,
    random_split_indices,
)

DATASETS = ("embedded", "cifar100", "imagenet", "folder")


@dataclass
class DataBundle:
    name: str
    train: LabeledSubset
    val: Dataset
    test: Dataset
    num_classes: int
    class_names: list[str]
    #: semantic superclass of each class, where the data set defines them (CIFAR-100, embedded)
    superclasses: torch.Tensor | None = None
    #: the long-tailed protocol's class order (rank 0 keeps the most images), when it is used
    class_order: torch.Tensor | None = None

    def train_counts(self) -> torch.Tensor:
        """``(C,)`` int64: training images per class (clean labels)."""
        return torch.bincount(self.train.targets, minlength=self.num_classes)

    def thirds(self) -> torch.Tensor:
        """``(C,)`` head/medium/tail (0/1/2) by training count: :func:`.common.class_thirds`."""
        return class_thirds(self.train_counts(), self.class_order)


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return name


def check_available(name: str, data_dir: str | None, download: bool) -> int:
    """Fail early, writing nothing, when the data is missing; return the number of classes."""
    check_dataset(name)
    if name == "embedded":
        return embedded.NUM_CLASSES
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir")
    if name == "cifar100":
        cifar.check_present(data_dir, download)
        return 100
    if download:
        raise ValueError(f"--download is only available for cifar100, not for {name!r}")
    imagefolder.check_present(data_dir, name)
    return imagefolder.count_classes(data_dir)


def build_data(
    name: str = "embedded",
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    val_size: int | None = None,
    val_per_class: int = 50,
    subset: str | int | None = None,
    image_size: int = 224,
    augment: bool = True,
    imbalance_ratio: float | None = None,
    subsample_seed: int | None = None,
    lookalike_group_size: int | None = None,
) -> DataBundle:
    """Load (or generate) a data set and split it; ``seed`` fixes generation and the
    train/validation split, ``subsample_seed`` (default: ``seed``) the training subsample: the
    balanced ``subset`` and the long-tailed split when ``imbalance_ratio`` is given.
    ``lookalike_group_size``: the embedded data's classes per look-alike group (None: 5)."""
    sub_seed = seed if subsample_seed is None else subsample_seed
    bundle = _load(name, data_dir, download, seed, val_size, val_per_class, subset, image_size,
                   augment, sub_seed, lookalike_group_size)  # fmt: skip
    if imbalance_ratio is None:
        return bundle
    train = bundle.train
    keep, order = long_tail_indices(train.targets, bundle.num_classes, imbalance_ratio, sub_seed)
    bundle.train = LabeledSubset(train.base, train.indices[keep], train.targets[keep],
                                 train.transform)  # fmt: skip
    bundle.class_order = order
    return bundle


def _load(name, data_dir, download, seed, val_size, val_per_class, subset, image_size,
          augment, sub_seed, group_size=None) -> DataBundle:  # fmt: skip
    num_classes = check_available(name, data_dir, download)
    if name == "embedded":
        gen = embedded.generate(seed, group_size=group_size or embedded.GROUP_SIZE)
        pool = TensorImages(gen.train_images, gen.train_labels)
        train_idx, val_idx = random_split_indices(len(pool), val_size or 500, seed)
        per_class = parse_subset(subset, num_classes)
        if per_class is not None:  # a balanced subset of the training split
            picked, _ = balanced_split_indices(
                gen.train_labels[train_idx], num_classes, 0, per_class, sub_seed
            )
            train_idx = train_idx[picked]
        train = LabeledSubset(pool, train_idx, gen.train_labels[train_idx])
        val = LabeledSubset(pool, val_idx, gen.train_labels[val_idx])
        test = TensorImages(gen.test_images, gen.test_labels)
        names = [f"class{c:02d}" for c in range(num_classes)]
        return DataBundle(name, train, val, test, num_classes, names, gen.groups)
    if name == "cifar100":
        if parse_subset(subset, num_classes) is not None:
            raise ValueError("CIFAR-100 runs use the full 45k training split; use --subset all")
        train, val, test, names = cifar.load(data_dir, download, seed, val_size or 5000, augment)
        mapping, _ = cifar.superclasses(data_dir)
        return DataBundle(name, train, val, test, len(names), names, mapping)
    per_class = parse_subset(subset, num_classes)
    train, val, test, names = imagefolder.load(
        data_dir, name, seed, val_per_class, per_class, image_size, augment, sub_seed
    )
    return DataBundle(name, train, val, test, len(names), names, None)


__all__ = ["DATASETS", "THIRDS", "DataBundle", "build_data", "check_available", "check_dataset"]
