"""smoothtopk: exact smooth top-k SVM losses for PyTorch.

The smooth top-k SVM loss of Berrada, Zisserman and Kumar (ICLR 2018), computed exactly in
``O(n k)``, with the calling convention of ``F.cross_entropy``.

The public names are imported on first use (PEP 562), so that ``import smoothtopk.experiments.cli``
(the ``smoothtopk`` command's ``--help`` and argument errors) does not pay for importing torch;
``from smoothtopk import smooth_topk_svm_loss`` and ``smoothtopk.backends.cpu`` work as before.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .hard_topk import topk_svm_loss
    from .linear import linear_smooth_topk_svm_loss, linear_topk_counts
    from .margins import ldam_margins
    from .metrics import TopkAccuracy, topk_accuracy
    from .modules import LinearSmoothTopkSVMLoss, SmoothTopkSVMLoss, TopkSVMLoss
    from .smooth_topk import smooth_topk_svm_loss

#: public name -> the module that defines it
_HOME = {
    "LinearSmoothTopkSVMLoss": "modules",
    "SmoothTopkSVMLoss": "modules",
    "TopkAccuracy": "metrics",
    "TopkSVMLoss": "modules",
    "ldam_margins": "margins",
    "linear_smooth_topk_svm_loss": "linear",
    "linear_topk_counts": "linear",
    "smooth_topk_svm_loss": "smooth_topk",
    "topk_accuracy": "metrics",
    "topk_svm_loss": "hard_topk",
}
__all__ = [
    "LinearSmoothTopkSVMLoss",
    "SmoothTopkSVMLoss",
    "TopkAccuracy",
    "TopkSVMLoss",
    "ldam_margins",
    "linear_smooth_topk_svm_loss",
    "linear_topk_counts",
    "smooth_topk_svm_loss",
    "topk_accuracy",
    "topk_svm_loss",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """A public name (imported from its module once) or a submodule (``smoothtopk.backends``)."""
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    if name.startswith("__"):  # __wrapped__, __file__ of a tool's probe: never a submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
