"""Comparator top-k losses from the literature (docs/comparators.md), under the loss contract.

Every loss has a functional form with the calling convention of
``torch.nn.functional.cross_entropy`` (shapes, ``weight``, ``ignore_index``, ``reduction``,
half precision computed in float32; hyper-parameters keyword-only) and a thin ``nn.Module``.
They are registered, with the package's other losses, in :data:`smoothtopk.registry.LOSSES`
(the one table of losses; ``smoothtopk.registry.comparators()`` is its comparator part)::

    >>> from smoothtopk.registry import comparators
    >>> criterion = comparators()["hinge-alpha"](k=5, alpha=1.0)

``"difftopk"`` is registered only when the optional packages difftopk and diffsort are
installed. See ``docs/comparators.md`` for the formulas and references.
"""

from __future__ import annotations

from .calibrated import (
    SmoothedTopkCalibratedHingeLoss,
    TopkCalibratedHingeLoss,
    ldam_class_margins,
    smoothed_topk_calibrated_hinge_loss,
    topk_calibrated_hinge_loss,
)
from .difftopk_adapter import (
    DiffTopkCrossEntropyLoss,
    difftopk_available,
    difftopk_cross_entropy_loss,
)
from .entropy import TruncatedTopkEntropyLoss, truncated_topk_entropy_loss
from .hinge import (
    TopkHingeAlphaLoss,
    TopkHingeBetaLoss,
    topk_hinge_alpha_loss,
    topk_hinge_beta_loss,
)
from .label_smoothing import LabelSmoothingCrossEntropyLoss, label_smoothing_cross_entropy
from .longtail import (
    LDAMSmoothedTopkCalibratedHingeLoss,
    LDAMSmoothTopkSVMLoss,
    LogitAdjustedCrossEntropyLoss,
    ldam_smooth_topk_svm_loss,
    ldam_smoothed_topk_calibrated_hinge_loss,
    logit_adjusted_cross_entropy,
)

__all__ = [
    "DiffTopkCrossEntropyLoss",
    "LDAMSmoothTopkSVMLoss",
    "LDAMSmoothedTopkCalibratedHingeLoss",
    "LabelSmoothingCrossEntropyLoss",
    "LogitAdjustedCrossEntropyLoss",
    "SmoothedTopkCalibratedHingeLoss",
    "TopkCalibratedHingeLoss",
    "TopkHingeAlphaLoss",
    "TopkHingeBetaLoss",
    "TruncatedTopkEntropyLoss",
    "difftopk_available",
    "difftopk_cross_entropy_loss",
    "label_smoothing_cross_entropy",
    "ldam_class_margins",
    "ldam_smooth_topk_svm_loss",
    "ldam_smoothed_topk_calibrated_hinge_loss",
    "logit_adjusted_cross_entropy",
    "smoothed_topk_calibrated_hinge_loss",
    "topk_calibrated_hinge_loss",
    "topk_hinge_alpha_loss",
    "topk_hinge_beta_loss",
    "truncated_topk_entropy_loss",
]
