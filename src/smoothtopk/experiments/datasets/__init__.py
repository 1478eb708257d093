"""Data sets by name: ``embedded`` (the default), ``cifar100``, ``imagenet`` and ``folder``.

:func:`build_data` returns a :class:`DataBundle` with clean labels everywhere; label noise is
added afterwards to the training split only (see :mod:`..noise`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from . import cifar, embedded, imagefolder
from .common import (
    LabeledSubset,
    TensorImages,
    balanced_split_indices,
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
) -> DataBundle:
    """Load (or generate) a data set and split it; ``seed`` fixes generation and splits."""
    num_classes = check_available(name, data_dir, download)
    if name == "embedded":
        gen = embedded.generate(seed)
        pool = TensorImages(gen.train_images, gen.train_labels)
        train_idx, val_idx = random_split_indices(len(pool), val_size or 500, seed)
        per_class = parse_subset(subset, num_classes)
        if per_class is not None:  # a balanced subset of the training split
            picked, _ = balanced_split_indices(
                gen.train_labels[train_idx], num_classes, 0, per_class, seed
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
        data_dir, name, seed, val_per_class, per_class, image_size, augment
    )
    return DataBundle(name, train, val, test, len(names), names, None)


__all__ = ["DATASETS", "DataBundle", "build_data", "check_available", "check_dataset"]
