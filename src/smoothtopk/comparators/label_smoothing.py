"""Cross-entropy with label smoothing (Szegedy et al., CVPR 2016), selectable by name.

    L(s, y) = (1 − ε) · CE(s, y) + ε · (1/C) · Σ_c CE(s, c)

computed per sample by ``torch.nn.functional.cross_entropy(..., label_smoothing=ε)``. Without
``weight`` the result equals ``F.cross_entropy(input, target, ignore_index=...,
reduction=..., label_smoothing=ε)`` exactly.

With ``weight`` this loss follows the package-wide contract: each sample's loss is multiplied
by ``weight[y]`` and ``"mean"`` divides by ``Σ weight[y_i]``. PyTorch weights the smoothing
term differently (each class term ``CE(s, c)`` by ``weight[c]``), so with both ``weight`` and
``label_smoothing > 0`` the two differ; with ``label_smoothing = 0`` they agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._convention import classification_loss
from .._validation import check_label_smoothing, keyword_only
from ..modules import _WeightedLoss

__all__ = ["LabelSmoothingCrossEntropyLoss", "label_smoothing_cross_entropy"]


@keyword_only
def label_smoothing_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.1,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy with label smoothing ``ε = label_smoothing`` in ``[0, 1]``.

    Args:
        input: scores ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``()``, ``(N)`` or ``(N, d1, ...)``.
        label_smoothing: ``ε`` in ``[0, 1]``; ``0`` is plain cross-entropy.
        weight, ignore_index, reduction: the package contract (see the module docstring for
            how ``weight`` differs from PyTorch's when ``ε > 0``).

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> s, y = torch.randn(4, 10), torch.randint(0, 10, (4,))
        >>> loss = label_smoothing_cross_entropy(s, y, label_smoothing=0.1)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(s, y, label_smoothing=0.1))
        True
    """
    label_smoothing = check_label_smoothing(label_smoothing)

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            scores, safe_target, reduction="none", label_smoothing=label_smoothing
        )

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)


class LabelSmoothingCrossEntropyLoss(_WeightedLoss):
    """Module form of :func:`label_smoothing_cross_entropy`."""

    functional = staticmethod(label_smoothing_cross_entropy)
    hyper_parameters = ("label_smoothing",)

    def __init__(
        self,
        label_smoothing: float = 0.1,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)
