"""Batch mixing of the training batches (``--mixup``, ``--cutmix``): torchvision's
``v2.MixUp`` and ``v2.CutMix``, or, when both are set, one of the two per batch
(``v2.RandomChoice``, as torchvision's reference training scripts do). They turn a batch of
hard labels into probability targets (rows of ``(N, C)`` that sum to 1) for a loss that takes
them (:attr:`smoothtopk.registry.LossEntry.probability_targets`); evaluation and every top-k
accuracy keep the hard labels.

Determinism: torchvision draws its random numbers (λ, CutMix's box, RandomChoice's pick) from
torch's global generator. :class:`Mixing` runs it inside ``torch.random.fork_rng`` with the
generator seeded, for every step, by :func:`step_seed` (the run's seed, the process's rank,
the epoch and the step). So the mixing of a step depends on nothing else, the global random
stream (initialisation, augmentation, a stochastic loss) is the one a run without mixing
draws, and a resumed run, even mid-epoch, mixes every step as the uninterrupted run did, with
no state to save in the checkpoint.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["Mixing", "build_mixing", "step_seed"]


def step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """The seed of one step's mixing: 63 bits of SHA-256 over the run's ``seed``, the
    process's ``rank`` and the (0-based) ``epoch`` and ``step`` (the same on every machine).

    Example:
        >>> step_seed(0, 0, 0, 1) != step_seed(0, 0, 0, 2)
        True
    """
    digest = hashlib.sha256(f"smoothtopk mixing {seed} {rank} {epoch} {step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Mixing:
    """MixUp (``mixup`` > 0), CutMix (``cutmix`` > 0) or a random choice of the two per batch,
    for ``num_classes`` classes. ``mixing(images, labels, seed)`` returns the mixed images
    and their probability targets, drawing only from a generator seeded with ``seed``.

    Example:
        >>> mix = Mixing(mixup=0.2, cutmix=0.0, num_classes=3)
        >>> images, targets = mix(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), seed=1)
        >>> targets.shape, bool(torch.allclose(targets.sum(1), torch.ones(4)))
        (torch.Size([4, 3]), True)
    """

    def __init__(self, mixup: float, cutmix: float, num_classes: int):
        from torchvision.transforms import v2

        chosen = []
        if mixup > 0:
            chosen.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            chosen.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        if not chosen:
            raise ValueError("Mixing needs mixup > 0 or cutmix > 0")
        self.transform = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):  # torchvision draws on the CPU generator
            torch.manual_seed(seed)
            return self.transform(images, labels)


def build_mixing(mixup: float, cutmix: float, num_classes: int) -> Mixing | None:
    """The run's :class:`Mixing`, or ``None`` when both options are 0 (off)."""
    if not (mixup or cutmix):
        return None
    return Mixing(mixup, cutmix, num_classes)
