"""Comparator top-k losses from the literature (SPEC §5), under the package's loss contract.

Every loss has a functional form with the calling convention of
``torch.nn.functional.cross_entropy`` (shapes, ``weight``, ``ignore_index``, ``reduction``,
half precision computed in float32) and a thin ``nn.Module``. :data:`LOSSES` maps a short name
to the Module class, so that an experiment can build any of them by name::

    >>> from smoothtopk.comparators import LOSSES
    >>> criterion = LOSSES["hinge-alpha"](k=5, alpha=1.0)

``"difftopk"`` is registered only when the optional packages difftopk and diffsort are
installed. See ``docs/comparators.md`` for the formulas and references.
"""

from __future__ import annotations

from torch import nn

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

LOSSES: dict[str, type[nn.Module]] = {
    "hinge-alpha": TopkHingeAlphaLoss,
    "hinge-beta": TopkHingeBetaLoss,
    "trunc-entropy": TruncatedTopkEntropyLoss,
    "calibrated-hinge": TopkCalibratedHingeLoss,
    "smoothed-calibrated-hinge": SmoothedTopkCalibratedHingeLoss,
    "ce-label-smoothing": LabelSmoothingCrossEntropyLoss,
}
if difftopk_available():
    LOSSES["difftopk"] = DiffTopkCrossEntropyLoss

__all__ = [
    "LOSSES",
    "DiffTopkCrossEntropyLoss",
    "LabelSmoothingCrossEntropyLoss",
    "SmoothedTopkCalibratedHingeLoss",
    "TopkCalibratedHingeLoss",
    "TopkHingeAlphaLoss",
    "TopkHingeBetaLoss",
    "TruncatedTopkEntropyLoss",
    "difftopk_available",
    "difftopk_cross_entropy_loss",
    "label_smoothing_cross_entropy",
    "ldam_class_margins",
    "smoothed_topk_calibrated_hinge_loss",
    "topk_calibrated_hinge_loss",
    "topk_hinge_alpha_loss",
    "topk_hinge_beta_loss",
    "truncated_topk_entropy_loss",
]
