"""Small data sets written in the real on-disk formats (CIFAR-100 pickles, image folders)."""

from __future__ import annotations

import os
import pickle

import numpy as np
from PIL import Image


def write_cifar100(root, per_class_train=3, per_class_test=1, num_classes=100, seed=0):
    """The CIFAR-100 python version: ``cifar-100-python/{train,test,meta}`` pickles.

    Fine class c belongs to coarse class ``(7 * c) % 20`` here (not consecutive, as in the real
    data), and every image's pixels encode its index so tests can trace samples."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    coarse_of = [(7 * c) % 20 for c in range(num_classes)]
    for name, per_class in (("train", per_class_train), ("test", per_class_test)):
        fine = [c for c in range(num_classes) for _ in range(per_class)]
        order = rng.permutation(len(fine))
        fine = [fine[i] for i in order]
        data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        entry = {
            "filenames": [f"img_{i}.png" for i in range(len(fine))],
            "batch_label": f"{name} batch",
            "fine_labels": fine,
            "coarse_labels": [coarse_of[c] for c in fine],
            "data": data,
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {
        "fine_label_names": [f"fine{c}" for c in range(num_classes)],
        "coarse_label_names": [f"coarse{g}" for g in range(20)],
    }
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return coarse_of


def write_image_folder(root, classes, per_class, split, size=12, seed=0):
    """``root/split/<class>/<n>.jpg|png``: JPEG and PNG files alternate."""
    rng = np.random.default_rng(seed)
    for c in classes:
        folder = os.path.join(root, split, c)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size + 2, 3), dtype=np.uint8)
            ext = "jpg" if i % 2 == 0 else "png"
            mode = "RGB" if i % 3 else "L"
            image = Image.fromarray(pixels).convert(mode)
            image.save(os.path.join(folder, f"{i}.{ext}"))
