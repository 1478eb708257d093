r"""The hard top-k SVM loss: the :math:`\tau \to 0` limit of :func:`smooth_topk_svm_loss`.

.. math::  l_k(s, y) = \max\Big(0,\ \alpha + \frac{(s_{\setminus y})_{[k]} - s_y}{k}\Big)

where :math:`(s_{\setminus y})_{[k]}` is the k-th largest score among the classes other than
``y``. The paper writes its hard loss as :math:`\max\{(s_{\setminus y} + \alpha)_{[k]} - s_y, 0\}`;
the limit of the smooth family divides the score difference by ``k``, so the two differ by that
factor on the score term (``docs/math.md``). Its gradient has at most two non-zero entries.

Example:
    >>> import torch
    >>> from smoothtopk import topk_svm_loss
    >>> topk_svm_loss(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([2]), k=2, alpha=1.0)
    tensor(1.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._reduction import classification_loss
from ._validation import check_k, check_non_negative


def topk_svm_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    k: int = 5,
    alpha: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Hard top-k SVM loss with the calling convention of ``F.cross_entropy``.

    Arguments as in :func:`smoothtopk.smooth_topk_svm_loss` (without ``tau``).
    """
    alpha = check_non_negative(alpha, "alpha")

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        kk = check_k(k, scores.shape[1])
        true_score = scores.gather(1, safe_target[:, None]).squeeze(1)
        others = scores.scatter(1, safe_target[:, None], float("-inf"))
        kth = others.topk(kk, dim=1).values[:, -1]
        return F.relu(alpha + (kth - true_score) / kk)

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)
