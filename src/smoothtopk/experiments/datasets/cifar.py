"""CIFAR-100 in its standard on-disk format (``cifar-100-python/{train,test,meta}``) through
torchvision: a seeded 45k/5k train/validation split of the official training set (validation
labels stay clean) and the official 10k test set."""

from __future__ import annotations

import os
import pickle

import torch
from torchvision import datasets, transforms

from .common import LabeledSubset, random_split_indices

FOLDER = "cifar-100-python"
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
HOW_TO_GET = (
    "pass --download to fetch it with torchvision (161 MB), or extract cifar-100-python.tar.gz "
    "from https://www.cs.toronto.edu/~kriz/cifar.html into {root}"
)


class _CIFAR100(datasets.CIFAR100):
    """torchvision's CIFAR-100 reader; the extracted files are checked for presence, not md5
    (the archive fetched by ``--download`` is still checked), so that copies re-pickled by
    other tools, and the small files the tests write, load too."""

    train_list = [[name, None] for name, _ in datasets.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR100.test_list]
    meta = {**datasets.CIFAR100.meta, "md5": None}


def check_present(root: str, download: bool) -> None:
    if download:
        return
    folder = os.path.join(root, FOLDER)
    missing = [f for f in ("train", "test", "meta") if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise ValueError(
            f"CIFAR-100 not found: {folder} lacks {', '.join(missing)}; "
            + HOW_TO_GET.format(root=root)
        )


def superclasses(root: str) -> tuple[torch.Tensor, list[str]]:
    """CIFAR-100's semantic superclass of each fine class, read from the official files."""
    folder = os.path.join(root, FOLDER)
    with open(os.path.join(folder, "train"), "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    with open(os.path.join(folder, "meta"), "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    fine = torch.as_tensor(entry["fine_labels"], dtype=torch.int64)
    coarse = torch.as_tensor(entry["coarse_labels"], dtype=torch.int64)
    num_fine = len(meta["fine_label_names"])
    mapping = torch.full((num_fine,), -1, dtype=torch.int64)
    mapping[fine] = coarse
    if (mapping < 0).any():
        raise ValueError(f"{folder}/train has no image of some fine classes")
    return mapping, list(meta["coarse_label_names"])


def load(root: str, download: bool, seed: int, val_size: int = 5000, augment: bool = True):
    """(train, validation, test, class names) with the standard CIFAR augmentation on train."""
    check_present(root, download)
    normalize = transforms.Normalize(MEAN, STD)
    plain = transforms.Compose([transforms.ToTensor(), normalize])
    train_tf = plain
    if augment:
        train_tf = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
    base = _CIFAR100(root, train=True, download=download)
    test_base = _CIFAR100(root, train=False, download=False)
    targets = torch.as_tensor(base.targets, dtype=torch.int64)
    train_idx, val_idx = random_split_indices(len(base), val_size, seed)
    train = LabeledSubset(base, train_idx, targets[train_idx], train_tf)
    val = LabeledSubset(base, val_idx, targets[val_idx], plain)
    test_targets = torch.as_tensor(test_base.targets, dtype=torch.int64)
    test = LabeledSubset(test_base, torch.arange(len(test_base)), test_targets, plain)
    return train, val, test, list(base.classes)
