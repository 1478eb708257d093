r"""Top-k accuracy: a function for one batch and an exact streaming accumulator.

**Tie rule.** For a sample with scores :math:`s \in \mathbb{R}^C` and target :math:`y`, let
:math:`g = |\{j : s_j > s_y\}|` (classes scoring strictly higher) and
:math:`t = |\{j : s_j = s_y\}|` (classes tied with the target, the target included). The
sample's top-k credit is the probability that the target lands in the top ``k`` when ties are
broken uniformly at random:

.. math::

    \mathrm{credit}_k(s, y) = \min\Bigl(1, \max\Bigl(0, \frac{k - g}{t}\Bigr)\Bigr)

that is 1 when :math:`g + t \le k`, 0 when :math:`g \ge k`, and :math:`(k - g)/t` when the tied
group straddles position ``k``. Without ties this is the usual :math:`1[g < k]`; a model that
outputs a constant scores exactly chance, :math:`k / C`. A row holding any NaN score gets
credit 0. :math:`\pm\infty` are ordinary scores (a :math:`-\infty` target ties with the other
:math:`-\infty` classes).

**Exact counts.** Credits are rationals with denominators ``t <= C``. The micro counts keep
them exactly, in int64: the number of fully credited rows and, for each tie size ``t``, the sum
of the numerators ``k - g`` (a ``(len(k), C)`` table). They add up exactly across batches,
:meth:`TopkAccuracy.merge` and :meth:`TopkAccuracy.all_reduce`, whatever the split or order,
and :meth:`TopkAccuracy.compute` returns the correctly rounded exact rational (a constant model
gives exactly ``k / C``). The per-class (macro) counts keep full credits in int64 and add the
fractional credits :math:`(k - g)/t` in float64: exact without ties, and within
:math:`m^2 \cdot 2^{-53}` of a sample of the exact value for a class with ``m`` rows whose tied
group straddles ``k``. Results are micro (or per-class) averages, never averages of averages.

**Averages.** ``average="micro"`` divides the total credit by the number of counted samples;
``average="macro"`` averages the per-class accuracies (credit / support) over the classes that
occur among the counted targets. Classes with no target are left out, as torchmetrics'
``MulticlassAccuracy(average="macro", top_k=k)`` does for ``k > 1``; for ``k = 1`` torchmetrics
also keeps, with accuracy 0, a class that is absent from the targets but predicted top-1 — here
the set of averaged classes depends on the targets only, for every ``k``.

Example:
    >>> import torch
    >>> from smoothtopk import topk_accuracy
    >>> scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    >>> topk_accuracy(scores, torch.tensor([2, 0]), k=(1, 2))
    (tensor(0.5000), tensor(1.))
    >>> topk_accuracy(torch.zeros(4, 10), torch.tensor([0, 1, 2, 3]), k=(1, 5))  # chance
    (tensor(0.1000), tensor(0.5000))
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import NamedTuple

import torch

from ._convention import num_classes_of, rows
from ._validation import check_ignore_index, check_input_target, check_target_range

_AVERAGES = ("micro", "macro")


def _check_ks(k, num_classes: int | None = None) -> tuple[int, ...]:
    """``k`` is an int ``>= 1`` or a non-empty sequence of them, each ``<= num_classes``."""
    if isinstance(k, numbers.Integral) and not isinstance(k, bool):
        ks = (k,)
    elif isinstance(k, (str, bytes, torch.Tensor)) or not hasattr(k, "__iter__"):
        raise TypeError(f"k must be an int or a sequence of ints, got {type(k).__name__}")
    else:
        ks = tuple(k)
    if not ks:
        raise ValueError("k must be an int or a non-empty sequence of ints, got an empty one")
    for value in ks:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"k must hold ints, got {type(value).__name__} ({value!r})")
        if value < 1:
            raise ValueError(f"every k must be >= 1, got {value}")
        if num_classes is not None and value > num_classes:
            raise ValueError(
                f"every k must be <= the number of classes ({num_classes}), got k={value}"
            )
    return tuple(int(v) for v in ks)


def _check_average(average) -> str:
    if not isinstance(average, str) or average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    return average


def _check_num_classes(num_classes, average: str) -> int | None:
    if num_classes is None:
        if average == "macro":
            raise ValueError('average="macro" needs num_classes (the per-class counts\' size)')
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an int or None, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


class TopkCounts(NamedTuple):
    """Counts of one batch or of an accumulator (``K = len(k)``, ``C`` classes).

    Per sample (``average="micro"``, ``per_class=False``), exact integers:

    - ``correct`` ``(K,)`` int64: rows with full credit;
    - ``partial`` ``(K, C)`` int64: column ``t - 1`` holds the sum of the numerators ``k - g``
      of the rows whose tied group of ``t`` classes straddles position ``k``, so that the
      credit is ``correct + sum_t partial[:, t - 1] / t`` exactly;
    - ``total`` ``()`` int64: counted rows.

    Per target class (``average="macro"``, ``per_class=True``): ``correct`` ``(K, C)`` int64,
    ``partial`` ``(K, C)`` float64 (the fractional credits ``(k - g)/t`` summed in float64),
    ``total`` ``(C,)`` int64 (the support of each class).
    """

    correct: torch.Tensor
    partial: torch.Tensor
    total: torch.Tensor


def _row_credit(scores: torch.Tensor, target: torch.Tensor, ks: torch.Tensor):
    """Per row: full credit (bool ``(M, K)``), the numerator ``k - g`` of a fractional credit
    (int64 ``(M, K)``, 0 unless the tied group straddles ``k``) and ``t`` (int64 ``(M, 1)``)."""
    true_score = scores.gather(1, target[:, None])
    higher = (scores > true_score).sum(dim=1, keepdim=True)  # g
    tied = (scores == true_score).sum(dim=1, keepdim=True)  # t >= 1 unless s_y is NaN
    clean = ~torch.isnan(scores).any(dim=1, keepdim=True)
    full = (higher + tied <= ks) & clean
    straddles = (higher < ks) & ~full & clean
    return full, torch.where(straddles, ks - higher, 0), tied.clamp(min=1)


def topk_counts(
    input: torch.Tensor,
    target: torch.Tensor,
    k=(1, 5),
    ignore_index: int = -100,
    per_class: bool = False,
) -> TopkCounts:
    r"""Top-k credit counts of one batch, on the input's device, without host–device sync.

    The credit of a sample is :math:`\min(1, \max(0, (k - g)/t))` (module docstring);
    ignored elements (``target == ignore_index``) are not counted.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``, floating.
        - target: ``()``, ``(N)`` or ``(N, d1, ...)``, integer class indices.
        - output: :class:`TopkCounts`, shapes ``(K,), (K, C), ()``, or with ``per_class``
          ``(K, C), (K, C), (C,)`` indexed by the target class.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])  # row 0: a 2-way tie
        >>> counts = topk_counts(scores, torch.tensor([0, 2]), k=(1, 2))
        >>> counts.correct, counts.total  # full credit: row 1 at k=2, row 0 at k=2
        (tensor([0, 2]), tensor(2))
        >>> counts.partial  # row 0 at k=1: numerator 1 over t=2, i.e. credit 1/2
        tensor([[0, 1, 0],
                [0, 0, 0]])
    """
    ks = _check_ks(k)
    ignore_index = check_ignore_index(ignore_index)
    check_input_target(input, target)
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")
    num_classes = num_classes_of(input)
    _check_ks(ks, num_classes)
    scores, flat_target = rows(input.detach(), target)
    valid = flat_target != ignore_index
    safe_target = torch.where(valid, flat_target, 0)
    check_target_range(flat_target, num_classes, ignore_index)
    full, numerator, tied = _row_credit(scores, safe_target, torch.tensor(ks, device=scores.device))
    full, numerator = full & valid[:, None], numerator * valid[:, None]
    if per_class:
        return _per_class(full, numerator, tied, valid, safe_target, num_classes)
    by_tie_size = torch.zeros(len(ks), num_classes, dtype=torch.int64, device=scores.device)
    by_tie_size.scatter_add_(1, (tied - 1).T.expand(len(ks), -1), numerator.T)
    return TopkCounts(full.sum(dim=0), by_tie_size, valid.sum())


def _per_class(full, numerator, tied, valid, target, num_classes: int) -> TopkCounts:
    """Scatter per-row credits ``(M, K)`` into per-target-class sums ``(K, C)``."""
    device, width = full.device, full.shape[1]
    correct = torch.zeros(width, num_classes, dtype=torch.int64, device=device)
    fractional = torch.zeros(width, num_classes, dtype=torch.float64, device=device)
    total = torch.zeros(num_classes, dtype=torch.int64, device=device)
    correct.index_add_(1, target, full.T.long())
    fractional.index_add_(1, target, (numerator.double() / tied.double()).T)
    total.index_add_(0, target, valid.long())
    return TopkCounts(correct, fractional, total)


def _credit(counts: TopkCounts, average: str) -> torch.Tensor:
    """float64 credit: ``(K,)`` per sample, ``(K, C)`` per class."""
    if average == "macro":
        return counts.correct.double() + counts.partial
    sizes = torch.arange(1, counts.partial.shape[-1] + 1, device=counts.partial.device)
    return counts.correct.double() + (counts.partial.double() / sizes.double()).sum(dim=-1)


def _fractions(counts: TopkCounts, average: str) -> torch.Tensor:
    """``(K,)`` float64 accuracies from counts (NaN when nothing, or no class, was counted)."""
    credit = _credit(counts, average)
    if average == "micro":
        return credit / counts.total.double()
    present = counts.total > 0
    per_class = credit / counts.total.clamp(min=1).double()
    return torch.where(present, per_class, 0.0).sum(dim=-1) / present.sum()


def _exact_micro(counts: TopkCounts) -> list[float]:
    """Micro accuracies as the correctly rounded exact rationals (one host transfer)."""
    total = int(counts.total)
    result = []
    for full, by_size in zip(counts.correct.tolist(), counts.partial.tolist(), strict=True):
        terms = [Fraction(int(n), t) for t, n in enumerate(by_size, start=1) if n]
        credit = Fraction(full) + sum(terms, Fraction(0))
        result.append(float(credit / total) if total else math.nan)
    return result


def topk_accuracy(
    input: torch.Tensor,
    target: torch.Tensor,
    k=(1, 5),
    ignore_index: int = -100,
    average: str = "micro",
) -> tuple[torch.Tensor, ...]:
    r"""Top-k accuracy of one batch, one 0-d tensor (default dtype) per ``k``.

    ``average="micro"``: :math:`\frac{1}{n}\sum_i \mathrm{credit}_k(s_i, y_i)` over the ``n``
    counted samples. ``average="macro"``:
    :math:`\frac{1}{|P|}\sum_{c \in P} \frac{1}{n_c}\sum_{i: y_i = c} \mathrm{credit}_k(s_i, y_i)`
    over the set ``P`` of classes with :math:`n_c > 0` counted targets. NaN when nothing is
    counted. Ties are shared (module docstring); ``1 <= k <= C``; targets must be in
    ``[0, C)`` or equal ``ignore_index``.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``, floating.
        - target: ``()``, ``(N)`` or ``(N, d1, ...)``, integer class indices.
        - output: a tuple of ``len(k)`` tensors of shape ``()``.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.0, 0.3, 0.7]])
        >>> topk_accuracy(scores, torch.tensor([0, 0, 1]), k=(1, 2), average="macro")
        (tensor(0.5000), tensor(1.))
    """
    average = _check_average(average)
    counts = topk_counts(input, target, k, ignore_index, per_class=average == "macro")
    fractions = _fractions(counts, average).to(torch.get_default_dtype())
    return tuple(fractions.unbind())


class TopkAccuracy:
    """Streaming top-k accuracy with exact counts over batches and processes.

    Ties are shared and NaN rows are wrong (module docstring). ``update`` never synchronises
    with the device; ``compute`` does, once. The state (:class:`TopkCounts`: ``correct``,
    ``partial``, ``total``) lives on the device of the first update. With ``average="micro"``
    it is all integers and ``compute`` returns the correctly rounded exact rationals;
    ``average="macro"`` keeps per-class counts and needs ``num_classes``. With ``num_classes``
    given, every ``k`` must be ``<= num_classes`` (checked here) and every update must have that
    many classes; without it, every update must have as many classes as the first.

    Example:
        >>> import torch
        >>> meter = TopkAccuracy(k=(1, 2))
        >>> meter.update(torch.tensor([[0.1, 0.5, 0.4]]), torch.tensor([2]))
        >>> meter.update(torch.tensor([[0.9, 0.05, 0.05]]), torch.tensor([0]))
        >>> meter.compute()
        {1: 0.5, 2: 1.0}
        >>> meter.update(torch.zeros(1, 3), torch.tensor([1]))  # a 3-way tie: credit 1/3, 2/3
        >>> meter.compute()  # (1 + 1/3) / 3 and (2 + 2/3) / 3
        {1: 0.4444444444444444, 2: 0.8888888888888888}
        >>> macro = TopkAccuracy(k=1, average="macro", num_classes=3)
        >>> macro.update(torch.tensor([[2.0, 1.0, 0.0]] * 3), torch.tensor([0, 0, 1]))
        >>> macro.compute()  # class 0: 2/2, class 1: 0/1, class 2 has no target: left out
        {1: 0.5}
    """

    def __init__(
        self,
        k=(1, 5),
        ignore_index: int = -100,
        average: str = "micro",
        num_classes: int | None = None,
    ) -> None:
        self.average = _check_average(average)
        self.num_classes = _check_num_classes(num_classes, self.average)
        self.k = _check_ks(k, self.num_classes)
        self.ignore_index = check_ignore_index(ignore_index)
        self.reset()

    def reset(self) -> None:
        self.correct: torch.Tensor | None = None
        self.partial: torch.Tensor | None = None
        self.total: torch.Tensor | None = None

    def _classes(self) -> int | None:
        """The number of classes every update must have, if known."""
        if self.num_classes is not None:
            return self.num_classes
        if self.partial is not None and self.partial.shape[-1] > 0:
            return self.partial.shape[-1]
        return None

    def update(self, input: torch.Tensor, target: torch.Tensor) -> None:
        """Add the counts of one batch (shapes as for :func:`topk_accuracy`)."""
        expected = self._classes()
        if expected is not None and isinstance(input, torch.Tensor) and input.dim():
            if num_classes_of(input) != expected:
                raise ValueError(
                    f"input has {num_classes_of(input)} classes, this TopkAccuracy counts "
                    f"{expected} (num_classes or the first update)"
                )
        per_class = self.average == "macro"
        self._add(topk_counts(input, target, self.k, self.ignore_index, per_class))

    def _add(self, counts) -> None:
        for name, value in zip(TopkCounts._fields, counts, strict=True):
            current = getattr(self, name)
            if value is not None:
                setattr(
                    self, name, value if current is None else current + value.to(current.device)
                )

    def state(self) -> TopkCounts:
        """The exact state (:class:`TopkCounts`; zeros before any update)."""
        width, classes = len(self.k), self.num_classes or 0
        micro = self.average == "micro"
        zeros = TopkCounts(
            torch.zeros((width,) if micro else (width, classes), dtype=torch.int64),
            torch.zeros(width, classes, dtype=torch.int64 if micro else torch.float64),
            torch.zeros(() if micro else (classes,), dtype=torch.int64),
        )
        return TopkCounts(*(z if v is None else v for v, z in zip(self._raw(), zeros, strict=True)))

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(credit, total)``: float64 credit (integers when there are no ties), int64 total.

        Shapes ``(K,)`` and ``()``, or per target class ``(K, C)`` and ``(C,)`` for
        ``average="macro"``. :meth:`state` has the exact counts behind the credit.
        """
        state = self.state()
        return _credit(state, self.average), state.total

    def merge(self, other: TopkAccuracy) -> TopkAccuracy:
        """Add the counts of another accumulator with the same ``k``, ``average`` and classes."""
        layout = self._layout()
        if not isinstance(other, TopkAccuracy) or other._layout() != layout:
            raise ValueError(
                f"can only merge a TopkAccuracy with k={self.k}, average={self.average!r}, "
                f"num_classes={self.num_classes}"
            )
        mine, theirs = self._classes(), other._classes()
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"cannot merge counts over {theirs} classes into counts over {mine}")
        self._add(tuple(None if v is None else v.clone() for v in other._raw()))
        return self

    def _raw(self) -> tuple:
        return self.correct, self.partial, self.total

    def _layout(self) -> tuple:
        return self.k, self.average, self.num_classes

    def all_reduce(self, group=None, device: torch.device | None = None) -> None:
        """Sum the counts over the processes of a ``torch.distributed`` group, in place.

        Every count is summed in its own dtype: int64 exactly (the whole micro state), the
        macro fractional credits in float64. ``device``: where the collective runs (a CUDA
        device for NCCL); default: the state's device.
        """
        import torch.distributed as dist

        state = self.state()
        device = device or state.correct.device
        partial = state.partial.to(device)
        width = torch.tensor([partial.shape[-1]], device=device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX, group=group)  # a rank may have no update
        if partial.shape[-1] == 0 and int(width) > 0:
            partial = partial.new_zeros(partial.shape[0], int(width))
        reduced = []
        for value in (state.correct, partial, state.total):
            value = value.to(device).clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
            reduced.append(value)
        self.correct, self.partial, self.total = reduced

    def compute(self) -> dict[int, float]:
        """``{k: accuracy}`` as Python floats; NaN when nothing (or no class) was counted."""
        state = self.state()
        if self.average == "micro":
            fractions = _exact_micro(state)
        else:
            fractions = _fractions(state, self.average).tolist()
        return dict(zip(self.k, fractions, strict=True))

    def __repr__(self) -> str:
        return (
            f"TopkAccuracy(k={self.k}, ignore_index={self.ignore_index}, "
            f"average={self.average!r}, num_classes={self.num_classes})"
        )
