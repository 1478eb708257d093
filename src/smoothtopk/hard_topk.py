r"""The hard top-k SVM loss: the :math:`\tau \to 0` limit of :func:`smooth_topk_svm_loss`.

.. math::  l_k(s, y) = \max\Big(0,\ \alpha + \frac{(s_{\setminus y})_{[k]} - s_y}{k}\Big)

where :math:`(s_{\setminus y})_{[k]}` is the k-th largest score among the classes other than
``y``. The paper writes its hard loss as :math:`\max\{(s_{\setminus y} + \alpha)_{[k]} - s_y, 0\}`;
the limit of the smooth family divides the score difference by ``k``, so the two differ by that
factor on the score term (``docs/math.md``). Its gradient has at most two non-zero entries.

See :func:`topk_svm_loss` for an example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._convention import (
    classification_loss,
    expected_loss,
    expects_distribution,
    prepare,
    row_poison,
)
from ._validation import check_label_smoothing, check_margins, keyword_only


@keyword_only
def topk_svm_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    alpha: float | torch.Tensor = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Hard top-k SVM loss with the calling convention of ``F.cross_entropy``.

    .. math::  l_k(s, y) = \max\Big(0,\ \alpha + \frac{(s_{\setminus y})_{[k]} - s_y}{k}\Big)

    the :math:`\tau \to 0` limit of :func:`smoothtopk.smooth_topk_svm_loss`. NaN or ``+inf``
    scores give NaN, as in cross-entropy; ``-inf`` scores rule classes out.

    Args:
        input, target, weight, ignore_index, reduction, label_smoothing: as in
            ``F.cross_entropy``: class indices or class probabilities ``q`` (the input's shape,
            a floating dtype), for which the loss is the expectation ``sum_c q_c l_k(s, c)``
            (:func:`smoothtopk.smooth_topk_svm_loss` says more).
        k: the top-k of interest, ``1 <= k < C`` (keyword-only, as every argument after
            ``target``).
        alpha: margin ``>= 0``, or per-class margins: a floating ``(C,)`` tensor of which
            sample ``i`` uses ``alpha[target_i]`` (as :func:`smoothtopk.smooth_topk_svm_loss`).

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from smoothtopk import topk_svm_loss
        >>> scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
        >>> topk_svm_loss(scores, torch.tensor([2]), k=2, alpha=1.0)  # 1 + (2 - 1) / 2
        tensor(1.5000)
    """
    alpha = check_margins(alpha, input, target)
    label_smoothing = check_label_smoothing(label_smoothing)
    if expects_distribution(target, label_smoothing):
        call = prepare(input, target, k, weight, ignore_index, reduction, probabilities=True)

        def row_losses(scores: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
            return (beta * hard_losses(scores, k, alpha)).sum(dim=1)

        return expected_loss(row_losses, call, weight, ignore_index, reduction, label_smoothing)
    per_class = isinstance(alpha, torch.Tensor)

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        true_score = scores.gather(1, safe_target[:, None]).squeeze(1)
        others = scores.scatter(1, safe_target[:, None], float("-inf"))
        kth = others.topk(k, dim=1).values[:, -1]
        margin = alpha.to(scores.dtype)[safe_target] if per_class else alpha
        return F.relu(margin + (kth - true_score) / k) + row_poison(scores)

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction, k=k)


def hard_losses(scores: torch.Tensor, k: int, alpha) -> torch.Tensor:
    """``(M, C)``: ``l_k(s_i, c)`` for every row and class, in ``O(C)`` per row after a top-(k+1):
    the k-th largest score other than ``c`` is the (k+1)-th of the row for the k largest
    classes, the k-th for the others."""
    scores = scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    top, index = scores.topk(k + 1, dim=1)
    among = torch.zeros_like(scores, dtype=torch.bool).scatter(1, index[:, :k], True)
    kth = torch.where(among, top[:, k : k + 1], top[:, k - 1 : k])
    margin = alpha.to(scores.dtype)[None, :] if isinstance(alpha, torch.Tensor) else alpha
    return F.relu(margin + (kth - scores) / k) + row_poison(scores)[:, None]
