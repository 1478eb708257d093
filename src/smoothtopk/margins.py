r"""Per-class margins for long-tailed data: larger margins for rarer classes.

:func:`ldam_margins` builds the margins of LDAM (Cao et al., "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss", NeurIPS 2019) from the training-set class counts, for the
``alpha`` of :func:`smoothtopk.smooth_topk_svm_loss` and :func:`smoothtopk.topk_svm_loss`.

Example:
    >>> import torch
    >>> from smoothtopk import ldam_margins, smooth_topk_svm_loss
    >>> alpha = ldam_margins(torch.tensor([100, 10, 1, 1]), max_margin=1.0)
    >>> alpha
    tensor([0.3162, 0.5623, 1.0000, 1.0000])
    >>> loss = smooth_topk_svm_loss(torch.randn(8, 4), torch.randint(0, 4, (8,)), k=2, alpha=alpha)
"""

from __future__ import annotations

import numbers

import torch

from ._validation import check_non_negative, checks_eagerly


def ldam_margins(class_counts, max_margin: float = 1.0, *, dtype=None) -> torch.Tensor:
    r"""LDAM-style per-class margins :math:`\alpha_c \propto n_c^{-1/4}`, largest ``max_margin``:

    .. math::

        \alpha_c = \text{max\_margin} \cdot \frac{n_c^{-1/4}}{\max_{c'} n_{c'}^{-1/4}}
                 = \text{max\_margin} \cdot \Big(\frac{\min_{c'} n_{c'}}{n_c}\Big)^{1/4},

    so the rarest class gets ``max_margin`` and a class 16 times as frequent half of it.
    Computed in float64. The counts' values are checked on the host for CPU tensors outside
    torch.compile, by an asynchronous device assertion otherwise (no device waits).

    Args:
        class_counts: the number of training samples of each class, ``(C,)``: a tensor or a
            sequence of numbers, every count finite and ``> 0``.
        max_margin: the margin of the rarest class, a finite number ``>= 0``.
        dtype: floating dtype of the result (default: ``torch.get_default_dtype()``).

    Shape:
        - class_counts: ``(C)``; output: ``(C)``, on the counts' device.

    Example:
        >>> import torch
        >>> ldam_margins([16, 1], max_margin=0.5)
        tensor([0.2500, 0.5000])
    """
    counts = _check_counts(class_counts)
    max_margin = check_non_negative(max_margin, "max_margin")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    margins = (counts.min() / counts).pow(0.25).mul(max_margin)
    return margins.to(dtype)


def _check_counts(class_counts) -> torch.Tensor:
    """The counts as a float64 ``(C,)`` tensor, all finite and ``> 0``: a ValueError for CPU
    counts outside torch.compile, an asynchronous device assertion elsewhere
    (:func:`._validation.checks_eagerly`, as the package's other checks of tensor values)."""
    if isinstance(class_counts, torch.Tensor):
        counts = class_counts
    elif isinstance(class_counts, (list, tuple)) and all(
        isinstance(c, numbers.Real) and not isinstance(c, bool) for c in class_counts
    ):
        counts = torch.tensor(class_counts, dtype=torch.float64)
    else:
        raise TypeError(
            "class_counts must be a tensor or a list/tuple of numbers, "
            f"got {type(class_counts).__name__}"
        )
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"class_counts must be real numbers, got dtype {counts.dtype}")
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"class_counts must be 1-D with one count per class, got shape {tuple(counts.shape)}"
        )
    counts = counts.to(torch.float64)
    bad = ~((counts > 0) & (counts < float("inf")))
    if not checks_eagerly(counts):  # no device waits: an asynchronous assertion
        torch._assert_async(~bad.any(), "class_counts must be finite and > 0")
        return counts
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"class_counts must be finite and > 0, got {float(counts[index])} for class {index}"
        )
    return counts
