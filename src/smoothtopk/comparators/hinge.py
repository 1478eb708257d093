"""Top-k hinge losses α and β of Lapin, Hein and Schiele.

With ``a_j = α + s_j − s_y`` for every class ``j ≠ y`` (the target is left out):

* top-k hinge α:  ``max(0, (1/k) · Σ_{j=1..k} a_[j])``
* top-k hinge β:  ``(1/k) · Σ_{j=1..k} max(0, a_[j])``

where ``a_[j]`` is the j-th largest entry of ``a`` over ``j ≠ y``.

Which form. The first paper (Lapin et al., "Top-k Multiclass SVM", NIPS 2015) sorts the whole
vector ``1 − e_y + s − s_y`` whose entry at ``y`` is ``0``; the follow-up ("Loss Functions for
Top-k Error: Analysis and Insights", CVPR 2016, and the TPAMI 2018 journal version) and the
authors' reference solver libsdca (``primal_loss`` of ``l2_hinge_topk`` / ``l2_topk_hinge``)
take the top-k over the classes ``j ≠ y`` only. We implement that later form, as
docs/comparators.md states it: it is the one that reduces to the Crammer–Singer multiclass SVM
for ``k = 1`` while never counting the target's own zero as one of the ``k`` "mistakes", and it
is the form the authors' code evaluates. α is the margin (``1`` in the papers); ``k`` satisfies
``1 <= k < C``.

Both losses are piecewise linear: the gradient is ``1/k`` on the selected classes (β: those
with ``a_j > 0``), ``−(number selected)/k`` on the target, and ``0`` elsewhere. At ties the
value is unique and autograd returns one valid subgradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._convention import classification_loss
from .._validation import check_k, check_non_negative, keyword_only
from ..modules import _WeightedLoss

__all__ = [
    "TopkHingeAlphaLoss",
    "TopkHingeBetaLoss",
    "topk_hinge_alpha_loss",
    "topk_hinge_beta_loss",
]


def _top_k_margins(scores: torch.Tensor, target: torch.Tensor, k: int, alpha: float):
    """The k largest ``α + s_j − s_y`` over ``j ≠ y``: shape ``(M, k)``."""
    true_score = scores.gather(1, target[:, None])
    margins = (alpha + scores - true_score).scatter(1, target[:, None], float("-inf"))
    return margins.topk(k, dim=1).values


@keyword_only
def topk_hinge_alpha_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    alpha: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Top-k hinge α (Lapin et al.): ``max(0, (1/k) Σ_{top-k, j≠y} (α + s_j − s_y))``.

    Args:
        input: scores ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``()``, ``(N)`` or ``(N, d1, ...)``.
        k: ``1 <= k < C``.
        alpha: margin ``>= 0``.
        weight, ignore_index, reduction: as in ``torch.nn.functional.cross_entropy``.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> topk_hinge_alpha_loss(torch.tensor([[3.0, 2.0, 0.0]]), torch.tensor([2]), k=2)
        tensor(3.5000)
    """
    alpha = check_non_negative(alpha, "alpha")

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        kk = check_k(k, scores.shape[1])
        top = _top_k_margins(scores, safe_target, kk, alpha)
        return F.relu(top.sum(dim=1) / kk)

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)


@keyword_only
def topk_hinge_beta_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    alpha: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Top-k hinge β (Lapin et al.): ``(1/k) Σ_{top-k, j≠y} max(0, α + s_j − s_y)``.

    Arguments as in :func:`topk_hinge_alpha_loss`. β ≥ α everywhere, with equality when the
    k selected margins have the same sign.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> topk_hinge_beta_loss(torch.tensor([[3.0, -4.0, 0.0]]), torch.tensor([2]), k=2)
        tensor(2.)
    """
    alpha = check_non_negative(alpha, "alpha")

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        kk = check_k(k, scores.shape[1])
        top = _top_k_margins(scores, safe_target, kk, alpha)
        return F.relu(top).sum(dim=1) / kk

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)


class TopkHingeAlphaLoss(_WeightedLoss):
    """Module form of :func:`topk_hinge_alpha_loss`."""

    functional = staticmethod(topk_hinge_alpha_loss)
    hyper_parameters = ("k", "alpha")

    def __init__(
        self,
        k: int = 5,
        alpha: float = 1.0,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.k = check_k(k, None)  # against the number of classes at each call
        self.alpha = check_non_negative(alpha, "alpha")


class TopkHingeBetaLoss(_WeightedLoss):
    """Module form of :func:`topk_hinge_beta_loss`."""

    functional = staticmethod(topk_hinge_beta_loss)
    hyper_parameters = ("k", "alpha")

    def __init__(
        self,
        k: int = 5,
        alpha: float = 1.0,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.k = check_k(k, None)  # against the number of classes at each call
        self.alpha = check_non_negative(alpha, "alpha")
