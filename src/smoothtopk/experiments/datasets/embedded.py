"""The embedded data set: seeded, procedurally generated images with CIFAR-100's class structure.

Why: the demo must run anywhere, offline, in minutes on two CPU cores, and still show what the
paper's CIFAR-100 experiment is about -- classes that come in groups of confusable look-alikes,
so that top-1 is hard while top-5 is meaningful, and grouped label noise hurts in the same way.

How (every draw from one ``torch.Generator`` seeded with ``seed``, so the data set is identical
on every machine and every call):

1. 20 *group* prototypes: 3x16x16 smooth random colour fields (Gaussian noise on a 4x4 grid,
   upsampled bilinearly), one per group of 5 look-alike classes. The groups are a fixed, seeded
   assignment of the classes (:func:`superclasses`), not the consecutive label blocks 0-4, 5-9,
   ...: as in CIFAR-100, whose alphabetical labels are not ordered by superclass, label noise
   within consecutive blocks (the paper's protocol) mostly moves a label to an unrelated class,
   and noise within superclasses moves it to a look-alike; the two are different experiments.
2. 100 *class* prototypes: the group prototype plus a smaller class-specific smooth field
   (``class_scale`` times as strong), so the 5 classes of a group look alike.
3. Each sample is its class prototype under a random affine transform (rotation up to
   +-20 degrees, scale 0.85-1.15, translation up to 2 pixels), a random contrast and brightness,
   plus a smooth *clutter* field and pixel noise. The clutter and noise are as strong as the
   difference between classes of one group, which makes top-1 hard; the groups stay easy to
   tell apart, which keeps top-5 meaningful.
4. Pixels are standardised per channel with the statistics of the training pool.

Sizes follow CIFAR-100 scaled down ten times: 50 training images per class (4,500 train + 500
validation after the split), and ``test_per_class`` (20) test images per class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

NUM_CLASSES = 100
GROUP_SIZE = 5
GROUPING_SEED = 2018  # the look-alike groups are one fixed structure, for every data seed
IMAGE_SIZE = 16
CHANNELS = 3


@dataclass(frozen=True)
class EmbeddedData:
    """Images ``(N, 3, 16, 16)`` float32 and labels ``(N,)`` int64 of the two official parts."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def groups(self) -> torch.Tensor:
        """The look-alike group (superclass) of each class: :func:`superclasses`."""
        return superclasses()


def superclasses() -> torch.Tensor:
    """``(100,)`` int64: the look-alike group of each class, 20 groups of 5, from a fixed seeded
    permutation of the classes (so not the consecutive blocks of ``--noise-groups consecutive``).

    Example:
        >>> groups = superclasses()
        >>> sorted(torch.bincount(groups).tolist()) == [GROUP_SIZE] * 20
        True
        >>> bool((groups == torch.arange(100) // GROUP_SIZE).all())
        False
    """
    order = torch.randperm(NUM_CLASSES, generator=torch.Generator().manual_seed(GROUPING_SEED))
    groups = torch.empty(NUM_CLASSES, dtype=torch.int64)
    groups[order] = torch.arange(NUM_CLASSES) // GROUP_SIZE
    return groups


def _smooth_field(n: int, grid: int, gen: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(n, CHANNELS, grid, grid, generator=gen)
    return F.interpolate(
        coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    )


def _render(
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    gen: torch.Generator,
    clutter: float,
    pixel_noise: float,
) -> torch.Tensor:
    n = labels.numel()
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(20)
    scale = 0.85 + 0.3 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * 2 / IMAGE_SIZE)  # +-2 pixels
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, CHANNELS, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    images = F.grid_sample(prototypes[labels], grid, padding_mode="reflection", align_corners=False)
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)
    brightness = 0.3 * torch.randn(n, CHANNELS, 1, 1, generator=gen)
    images = contrast * images + brightness
    images = images + clutter * _smooth_field(n, 8, gen)
    images = images + pixel_noise * torch.randn(images.shape, generator=gen)
    return images


def generate(
    seed: int = 0,
    train_per_class: int = 50,
    test_per_class: int = 20,
    class_scale: float = 0.25,
    clutter: float = 1.2,
    pixel_noise: float = 1.0,
) -> EmbeddedData:
    """Generate the data set; the same arguments give the same tensors, bit for bit."""
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("train_per_class and test_per_class must be >= 1")
    return _generate(seed, train_per_class, test_per_class, class_scale, clutter, pixel_noise)


@lru_cache(maxsize=4)
def _generate(seed, train_per_class, test_per_class, class_scale, clutter, pixel_noise):
    gen = torch.Generator().manual_seed(int(seed))
    num_groups = NUM_CLASSES // GROUP_SIZE
    group_protos = _smooth_field(num_groups, 4, gen)
    class_protos = group_protos[superclasses()]
    class_protos = class_protos + class_scale * _smooth_field(NUM_CLASSES, 4, gen)

    train_labels = torch.arange(NUM_CLASSES).repeat_interleave(train_per_class)
    test_labels = torch.arange(NUM_CLASSES).repeat_interleave(test_per_class)
    train = _render(class_protos, train_labels, gen, clutter, pixel_noise)
    test = _render(class_protos, test_labels, gen, clutter, pixel_noise)

    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    train = ((train - mean) / std).contiguous()
    test = ((test - mean) / std).contiguous()
    return EmbeddedData(train, train_labels, test, test_labels)
