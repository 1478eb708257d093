r"""Top-k accuracy: a function for one batch and an exact streaming accumulator.

A sample counts as correct at ``k`` when fewer than ``k`` classes score strictly higher than
its target, i.e. the top-k error is :math:`1[s_{[k]} > s_y]` (ties go in favour of the target;
a NaN target score is never correct). Counts are integers, so results accumulated over batches
or processes are exact micro-averages, never averages of averages.

Example:
    >>> import torch
    >>> from smoothtopk import topk_accuracy
    >>> scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    >>> topk_accuracy(scores, torch.tensor([2, 0]), k=(1, 2))
    (tensor(0.5000), tensor(1.))
"""

from __future__ import annotations

import numbers

import torch

from ._reduction import num_classes_of, rows
from ._validation import check_input_target


def _check_ks(k) -> tuple[int, ...]:
    ks = (k,) if isinstance(k, numbers.Integral) and not isinstance(k, bool) else tuple(k)
    if not ks:
        raise ValueError("k must be an int or a non-empty sequence of ints")
    for value in ks:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"k must hold ints, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"every k must be >= 1, got {value}")
    return tuple(int(v) for v in ks)


def topk_correct(input: torch.Tensor, target: torch.Tensor, k=(1, 5), ignore_index: int = -100):
    """Counts for one batch: ``(correct (len(k),) int64, total () int64)`` on the input's device."""
    ks = _check_ks(k)
    check_input_target(input, target)
    scores, flat_target = rows(input.detach(), target)
    valid = flat_target != ignore_index
    safe_target = torch.where(valid, flat_target, 0).clamp(0, num_classes_of(input) - 1)
    true_score = scores.gather(1, safe_target[:, None])
    higher = (scores > true_score).sum(dim=1)
    usable = valid & ~torch.isnan(true_score.squeeze(1))
    thresholds = torch.tensor(ks, device=scores.device)
    correct = ((higher[:, None] < thresholds) & usable[:, None]).sum(dim=0)
    return correct, valid.sum()


def topk_accuracy(
    input: torch.Tensor, target: torch.Tensor, k=(1, 5), ignore_index: int = -100
) -> tuple[torch.Tensor, ...]:
    """Micro-averaged top-k accuracy of one batch, one float tensor per ``k`` (NaN if empty)."""
    correct, total = topk_correct(input, target, k, ignore_index)
    fractions = correct.double() / total
    return tuple(fraction.to(torch.get_default_dtype()) for fraction in fractions)


class TopkAccuracy:
    """Streaming top-k accuracy with exact integer counts.

    ``update`` never synchronises with the device; ``compute`` does, once.

    Example:
        >>> import torch
        >>> meter = TopkAccuracy(k=(1, 2))
        >>> meter.update(torch.tensor([[0.1, 0.5, 0.4]]), torch.tensor([2]))
        >>> meter.update(torch.tensor([[0.9, 0.05, 0.05]]), torch.tensor([0]))
        >>> meter.compute()
        {1: 0.5, 2: 1.0}
    """

    def __init__(self, k=(1, 5), ignore_index: int = -100) -> None:
        self.k = _check_ks(k)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.correct: torch.Tensor | None = None
        self.total: torch.Tensor | None = None

    def update(self, input: torch.Tensor, target: torch.Tensor) -> None:
        correct, total = topk_correct(input, target, self.k, self.ignore_index)
        if self.correct is None:
            self.correct, self.total = correct, total
        else:
            self.correct = self.correct + correct.to(self.correct.device)
            self.total = self.total + total.to(self.total.device)

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(correct per k, total)`` as int64 tensors (zeros before any update)."""
        if self.correct is None:
            return torch.zeros(len(self.k), dtype=torch.int64), torch.zeros((), dtype=torch.int64)
        return self.correct, self.total

    def merge(self, other: TopkAccuracy) -> TopkAccuracy:
        """Add the counts of another accumulator with the same ``k`` (e.g. from another process)."""
        if not isinstance(other, TopkAccuracy) or other.k != self.k:
            raise ValueError(f"can only merge a TopkAccuracy with k={self.k}")
        correct, total = other.counts()
        if self.correct is None:
            self.correct, self.total = correct.clone(), total.clone()
        else:
            self.correct = self.correct + correct.to(self.correct.device)
            self.total = self.total + total.to(self.total.device)
        return self

    def all_reduce(self, group=None, device: torch.device | None = None) -> None:
        """Sum the counts over the processes of a ``torch.distributed`` group, in place."""
        import torch.distributed as dist

        correct, total = self.counts()
        device = device or correct.device
        packed = torch.cat([correct.to(device), total.reshape(1).to(device)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        self.correct, self.total = packed[:-1], packed[-1]

    def compute(self) -> dict[int, float]:
        """``{k: fraction}``; NaN when nothing was counted."""
        correct, total = self.counts()
        total = int(total)
        return {
            k: (int(c) / total if total else float("nan"))
            for k, c in zip(self.k, correct.tolist(), strict=True)
        }

    def __repr__(self) -> str:
        return f"TopkAccuracy(k={self.k}, ignore_index={self.ignore_index})"
