"""Truncated top-k entropy loss of Lapin, Hein and Schiele (CVPR 2016).

    L(s, y) = log(1 + Σ_{j ∈ J_y} exp(s_j − s_y))

where ``J_y`` holds the classes ``j ≠ y`` that are *not* among the ``k − 1`` largest scores of
``s\\y``: the ``k − 1`` strongest competitors are forgiven, and the loss is the softmax loss on
the rest. ``k = 1`` is exactly cross-entropy. The loss is not convex for ``k > 1`` (the set
``J_y`` changes with ``s``) but is smooth wherever the ``(k−1)``-th and ``k``-th largest scores
of ``s\\y`` differ; at such a tie the value does not depend on which tied class is forgiven.
"""

from __future__ import annotations

import torch

from .._convention import classification_loss
from .._validation import check_k, keyword_only
from ..modules import _WeightedLoss

__all__ = ["TruncatedTopkEntropyLoss", "truncated_topk_entropy_loss"]


@keyword_only
def truncated_topk_entropy_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Truncated top-k entropy: ``log(1 + Σ_{j ∉ top-(k−1) of s\\y, j≠y} exp(s_j − s_y))``.

    Args:
        input: scores ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``()``, ``(N)`` or ``(N, d1, ...)``.
        k: ``1 <= k < C`` (``k − 1`` competitors are forgiven).
        weight, ignore_index, reduction: as in ``torch.nn.functional.cross_entropy``.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> s = torch.tensor([[5.0, 0.0, 0.0]])
        >>> truncated_topk_entropy_loss(s, torch.tensor([1]), k=2)  # log(1 + e^0)
        tensor(0.6931)
    """

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        kk = check_k(k, scores.shape[1])
        true_score = scores.gather(1, safe_target[:, None])
        diffs = (scores - true_score).scatter(1, safe_target[:, None], float("-inf"))
        if kk > 1:
            forgiven = diffs.detach().topk(kk - 1, dim=1).indices
            diffs = diffs.scatter(1, forgiven, float("-inf"))
        # log(1 + Σ exp(d_j)) as a logsumexp with the constant term 0 (exp(0) = 1).
        zero = torch.zeros_like(true_score)
        return torch.logsumexp(torch.cat([zero, diffs], dim=1), dim=1)

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)


class TruncatedTopkEntropyLoss(_WeightedLoss):
    """Module form of :func:`truncated_topk_entropy_loss`."""

    functional = staticmethod(truncated_topk_entropy_loss)
    hyper_parameters = ("k",)

    def __init__(
        self,
        k: int = 5,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.k = check_k(k, None)  # against the number of classes at each call
