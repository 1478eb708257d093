"""ImageNet-style folders (``train/<class>/<image>``, ``val/<class>/<image>``) through
torchvision's ImageFolder: balanced per-class training subsets, a balanced validation set held
out of the training images, and the official validation images as the test set."""

from __future__ import annotations

import os

import torch
from torchvision import datasets, transforms

from .common import LabeledSubset, balanced_split_indices

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGENET_HOW_TO_GET = (
    "ImageNet cannot be downloaded by torchvision: get ILSVRC2012 from "
    "https://image-net.org/download.php (registration required), extract the training images to "
    "{root}/train/<wnid>/ and sort the validation images into {root}/val/<wnid>/ "
    "(e.g. with the valprep.sh script of the PyTorch ImageNet example)"
)
FOLDER_HOW_TO_GET = (
    "a folder data set needs {root}/train/<class>/<image> and {root}/test/<class>/<image> "
    "(or val/ instead of test/), one sub-folder per class with the same class names"
)


def _test_dir(root: str) -> str | None:
    for name in ("test", "val"):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def check_present(root: str, kind: str) -> None:
    """Raise a ValueError saying how to obtain the data when the folders are missing."""
    test_names = ("val",) if kind == "imagenet" else ("test", "val")
    ok = os.path.isdir(os.path.join(root, "train")) and any(
        os.path.isdir(os.path.join(root, n)) for n in test_names
    )
    if not ok:
        how = IMAGENET_HOW_TO_GET if kind == "imagenet" else FOLDER_HOW_TO_GET
        label = "ImageNet" if kind == "imagenet" else "image folder data set"
        raise ValueError(f"{label} not found in {root}: " + how.format(root=root))


def load(
    root: str,
    kind: str,
    seed: int,
    val_per_class: int = 50,
    train_per_class: int | None = None,
    image_size: int = 224,
    augment: bool = True,
    train_seed: int | None = None,
):
    """(train, validation, test, class names); ``kind`` is ``"imagenet"`` or ``"folder"``;
    ``seed`` draws the validation images, ``train_seed`` (default: ``seed``) the training
    subsample (:func:`.common.balanced_split_indices`)."""
    check_present(root, kind)
    normalize = transforms.Normalize(MEAN, STD)
    resize = int(round(image_size * 256 / 224))
    plain = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    train_tf = plain
    if augment:
        train_tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
    test_dir = os.path.join(root, "val") if kind == "imagenet" else _test_dir(root)
    try:
        base = datasets.ImageFolder(os.path.join(root, "train"))
        test_base = datasets.ImageFolder(test_dir)
    except FileNotFoundError as err:  # empty folders, no image files
        raise ValueError(f"cannot read the image folders in {root}: {err}") from None
    if test_base.classes != base.classes:
        raise ValueError(
            f"the class folders of {test_dir} differ from those of {root}/train "
            f"({len(test_base.classes)} vs {len(base.classes)} classes)"
        )
    targets = torch.as_tensor(base.targets, dtype=torch.int64)
    train_idx, val_idx = balanced_split_indices(
        targets, len(base.classes), val_per_class, train_per_class, seed, train_seed
    )
    train = LabeledSubset(base, train_idx, targets[train_idx], train_tf)
    val = LabeledSubset(base, val_idx, targets[val_idx], plain)
    test_targets = torch.as_tensor(test_base.targets, dtype=torch.int64)
    test = LabeledSubset(test_base, torch.arange(len(test_base)), test_targets, plain)
    return train, val, test, list(base.classes)


def count_classes(root: str) -> int:
    """The number of class folders in ``root/train`` (read-only, for argument checks)."""
    return len(datasets.folder.find_classes(os.path.join(root, "train"))[0])
