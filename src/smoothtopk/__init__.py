"""smoothtopk: exact smooth top-k SVM losses for PyTorch.

The smooth top-k SVM loss of Berrada, Zisserman and Kumar (ICLR 2018), computed exactly in
``O(n k)``, with the calling convention of ``F.cross_entropy``.
"""

from .hard_topk import topk_svm_loss
from .margins import ldam_margins
from .metrics import TopkAccuracy, topk_accuracy
from .modules import SmoothTopkSVMLoss, TopkSVMLoss
from .smooth_topk import smooth_topk_svm_loss

__all__ = [
    "SmoothTopkSVMLoss",
    "TopkAccuracy",
    "TopkSVMLoss",
    "ldam_margins",
    "smooth_topk_svm_loss",
    "topk_accuracy",
    "topk_svm_loss",
]
__version__ = "0.1.0"
