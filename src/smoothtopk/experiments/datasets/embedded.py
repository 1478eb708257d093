"""The embedded data set: seeded, procedurally generated images with CIFAR-100's class structure.

Why: the demo must run anywhere, offline, in minutes on two CPU cores, and still show what the
paper's CIFAR-100 experiment is about -- classes that come in groups of confusable look-alikes,
so that top-1 is hard while top-5 is meaningful, and grouped label noise hurts in the same way.

How (every draw from one ``torch.Generator`` seeded with ``seed``, so the data set is identical
on every machine and every call):

1. 20 *group* prototypes: 3x16x16 smooth random colour fields (Gaussian noise on a 4x4 grid,
   upsampled bilinearly), one per group of 5 look-alike classes (``group_size``, the option
   ``--lookalike-group-size``, changes the size of the groups and nothing else:
   :func:`_prototypes`). The groups are a fixed, seeded
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
    group_size: int = GROUP_SIZE  #: classes per look-alike group (:func:`superclasses`)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def groups(self) -> torch.Tensor:
        """The look-alike group (superclass) of each class: :func:`superclasses`."""
        return superclasses(self.group_size)


#: the look-alike group sizes the data can have (``--lookalike-group-size``): two or more
#: classes per group, two or more groups
GROUP_SIZES = range(2, NUM_CLASSES // 2 + 1)


def check_group_size(size) -> int:
    """``size`` if the embedded data can have look-alike groups of that many classes
    (:data:`GROUP_SIZES`); ValueError naming the option otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or size not in GROUP_SIZES:
        raise ValueError(
            f"lookalike_group_size must be an integer from {GROUP_SIZES[0]} to "
            f"{GROUP_SIZES[-1]} (classes per look-alike group of the {NUM_CLASSES} classes), "
            f"got {size!r}"
        )
    return size


def superclasses(group_size: int = GROUP_SIZE) -> torch.Tensor:
    """``(100,)`` int64: the look-alike group of each class, ``100 // group_size`` groups of
    ``group_size`` classes (the remainder, ``100 % group_size`` classes, joins the last group:
    3 gives 32 groups of 3 and one of 4), from a fixed seeded permutation of the classes (so
    not the consecutive blocks of ``--noise-groups consecutive``; the same permutation for
    every size, so groups of 10 are pairs of the groups of 5).

    Example:
        >>> groups = superclasses()
        >>> sorted(torch.bincount(groups).tolist()) == [GROUP_SIZE] * 20
        True
        >>> bool((groups == torch.arange(100) // GROUP_SIZE).all())
        False
        >>> sorted(torch.bincount(superclasses(3)).tolist()) == [3] * 32 + [4]
        True
    """
    check_group_size(group_size)
    order = torch.randperm(NUM_CLASSES, generator=torch.Generator().manual_seed(GROUPING_SEED))
    groups = torch.empty(NUM_CLASSES, dtype=torch.int64)
    groups[order] = (torch.arange(NUM_CLASSES) // group_size).clamp(
        max=NUM_CLASSES // group_size - 1
    )
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
    group_size: int = GROUP_SIZE,
) -> EmbeddedData:
    """Generate the data set; the same arguments give the same tensors, bit for bit.
    ``group_size``: classes per look-alike group (:func:`superclasses`; :func:`_prototypes`)."""
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("train_per_class and test_per_class must be >= 1")
    check_group_size(group_size)
    return _generate(seed, train_per_class, test_per_class, class_scale, clutter, pixel_noise,
                     group_size)  # fmt: skip


def _prototypes(seed, gen: torch.Generator, class_scale: float, group_size: int) -> torch.Tensor:
    """The 100 class prototypes: a group field per look-alike group plus a class field.

    The draws of ``gen`` are those of the default groups of 5 whatever ``group_size`` (20
    group fields, then the class fields), so that another group size changes only the
    grouping: the class fields and every sample's transform, clutter and noise stay. The
    fields of other groups come from a generator of their own seeded with ``seed`` (the
    first 20 are the default groups' fields)."""
    default = _smooth_field(NUM_CLASSES // GROUP_SIZE, 4, gen)
    groups = superclasses(group_size)
    if group_size != GROUP_SIZE:
        own = torch.Generator().manual_seed(int(seed))
        default = _smooth_field(int(groups.max()) + 1, 4, own)
    return default[groups] + class_scale * _smooth_field(NUM_CLASSES, 4, gen)


@lru_cache(maxsize=4)
def _generate(seed, train_per_class, test_per_class, class_scale, clutter, pixel_noise,
              group_size=GROUP_SIZE):  # fmt: skip
    gen = torch.Generator().manual_seed(int(seed))
    class_protos = _prototypes(seed, gen, class_scale, group_size)

    train_labels = torch.arange(NUM_CLASSES).repeat_interleave(train_per_class)
    test_labels = torch.arange(NUM_CLASSES).repeat_interleave(test_per_class)
    train = _render(class_protos, train_labels, gen, clutter, pixel_noise)
    test = _render(class_protos, test_labels, gen, clutter, pixel_noise)

    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    train = ((train - mean) / std).contiguous()
    test = ((test - mean) / std).contiguous()
    return EmbeddedData(train, train_labels, test, test_labels, group_size)
