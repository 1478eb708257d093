"""Every loss of the package, by name: the one table that the experiment runner (``--loss``),
the benchmark contenders and the contract tests read.

Each entry, a :class:`LossEntry`, gives the loss's name, its functional (the calling convention
of ``torch.nn.functional.cross_entropy``: ``loss(input, target, *, <options>, weight=None,
ignore_index=-100, reduction="mean")``), its ``nn.Module`` (the same options as constructor
arguments, plus ``weight``, ``ignore_index`` and ``reduction``), its hyper-parameters with their
defaults, and the independent reference the tests check it against.

* ``ce``: ``torch.nn.functional.cross_entropy`` / ``nn.CrossEntropyLoss`` (PyTorch's own);
* ``smooth-svm``: :func:`~smoothtopk.smooth_topk_svm_loss` (``k=5, tau=1, alpha=1``), the paper's
  :math:`L_{k,\\tau}`, and ``hard-svm``: :func:`~smoothtopk.topk_svm_loss` (``k=5, alpha=1``);
* the comparators of :mod:`smoothtopk.comparators`: ``hinge-alpha``, ``hinge-beta``,
  ``trunc-entropy``, ``calibrated-hinge``, ``smoothed-calibrated-hinge``,
  ``ce-label-smoothing`` and ``difftopk``;
* for long-tailed data, the losses built from the training class counts (``class_counts``,
  ``None`` meaning balanced; :attr:`LossEntry.needs_class_counts`): ``ce-logit-adjusted``
  (Menon et al. 2021), ``smooth-svm-ldam`` (:math:`L_{k,\tau}` with LDAM margins) and
  ``smoothed-calibrated-hinge-ldam`` (pytopk's imbalanced margins).

``difftopk`` is registered only when the optional packages difftopk and diffsort are installed.
To add a loss: write its functional (a per-sample function of valid rows under
:func:`smoothtopk._convention.classification_loss`, keyword-only after ``target`` through
:func:`smoothtopk._validation.keyword_only`) and its Module (a ``modules._WeightedLoss``), add
one :class:`LossEntry` below, and its brute-force reference to the tests; the contract suite
``tests/test_contract.py`` then runs over it.

Example:
    >>> import torch
    >>> from smoothtopk.registry import LOSSES
    >>> spec = LOSSES["hinge-alpha"]
    >>> dict(spec.options)
    {'k': 5, 'alpha': 1.0}
    >>> criterion = spec.module(k=2, alpha=0.5)
    >>> scores, target = torch.tensor([[3.0, 2.0, 0.0]]), torch.tensor([2])
    >>> bool(criterion(scores, target) == spec.functional(scores, target, k=2, alpha=0.5))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from .comparators.calibrated import (
    SmoothedTopkCalibratedHingeLoss,
    TopkCalibratedHingeLoss,
    smoothed_topk_calibrated_hinge_loss,
    topk_calibrated_hinge_loss,
)
from .comparators.difftopk_adapter import (
    DiffTopkCrossEntropyLoss,
    difftopk_available,
    difftopk_cross_entropy_loss,
)
from .comparators.entropy import TruncatedTopkEntropyLoss, truncated_topk_entropy_loss
from .comparators.hinge import (
    TopkHingeAlphaLoss,
    TopkHingeBetaLoss,
    topk_hinge_alpha_loss,
    topk_hinge_beta_loss,
)
from .comparators.label_smoothing import (
    LabelSmoothingCrossEntropyLoss,
    label_smoothing_cross_entropy,
)
from .comparators.longtail import (
    LDAMSmoothedTopkCalibratedHingeLoss,
    LDAMSmoothTopkSVMLoss,
    LogitAdjustedCrossEntropyLoss,
    ldam_smooth_topk_svm_loss,
    ldam_smoothed_topk_calibrated_hinge_loss,
    logit_adjusted_cross_entropy,
)
from .hard_topk import topk_svm_loss
from .modules import SmoothTopkSVMLoss, TopkSVMLoss
from .smooth_topk import smooth_topk_svm_loss

__all__ = ["LOSSES", "LossEntry", "comparators", "get"]


@dataclass(frozen=True)
class LossEntry:
    """One loss of the package.

    Attributes:
        name: the name under which the runner (``--loss``) and the tests know it.
        functional: ``functional(input, target, *, **options, weight, ignore_index,
            reduction)``.
        module: the ``nn.Module`` class; ``module(**options)`` builds it.
        options: the loss's hyper-parameters with their defaults (read-only).
        reference: ``"module:function"`` of the independent reference in the repository's
            ``tests/`` directory (test code, not shipped), called as
            ``function(scores, target, **options)`` on one float64 score vector; ``None``
            when there is none (PyTorch's own loss; a Monte Carlo loss, checked against its
            reference with shared noise in ``tests/comparators``).
        summary: the loss in one line.
        comparator: a loss from the literature the smooth loss is compared against
            (:mod:`smoothtopk.comparators`), rather than the paper's own or cross-entropy.
        stochastic: it draws noise at each call; its ``generator`` option makes calls
            reproducible.
        float32_only: it computes in float32 whatever the input dtype (float64 included).
        torch_contract: PyTorch's own function, with PyTorch's checks and messages, not the
            package's (``_validation``) and with positional hyper-parameters.
        probability_targets: like ``F.cross_entropy``, it also takes probability targets (a
            float tensor of the input's shape ``(N, C)``) and a ``label_smoothing=`` in
            ``[0, 1]`` (functional and Module): the one place that says so. The runner's
            ``--mixup``, ``--cutmix`` and ``--label-smoothing`` are offered to these losses
            (and ``--label-smoothing`` to those with a ``label_smoothing`` option).
    """

    name: str
    functional: Callable[..., torch.Tensor]
    module: type[nn.Module]
    options: Mapping[str, object] = field(default_factory=dict)
    reference: str | None = None
    summary: str = ""
    comparator: bool = False
    stochastic: bool = False
    float32_only: bool = False
    torch_contract: bool = False
    probability_targets: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def needs_class_counts(self) -> bool:
        """It takes the training-set class counts (option ``class_counts``, ``None`` meaning
        balanced classes): the runner hands it the counts of the labels it trains on."""
        return "class_counts" in self.options

    def build(self, **options) -> nn.Module:
        """The Module with the given options (the others keep their defaults); with
        :attr:`probability_targets`, ``label_smoothing`` too."""
        known = set(self.options) | ({"label_smoothing"} if self.probability_targets else set())
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"loss {self.name!r} takes no option {', '.join(unknown)}")
        return self.module(**options)


_COMPARATOR = {"comparator": True}
_SPECS = [
    LossEntry(
        "ce", F.cross_entropy, nn.CrossEntropyLoss,
        summary="cross-entropy, torch.nn.functional.cross_entropy", torch_contract=True,
        probability_targets=True,
    ),
    LossEntry(
        "smooth-svm", smooth_topk_svm_loss, SmoothTopkSVMLoss,
        {"k": 5, "tau": 1.0, "alpha": 1.0}, "reference:brute_force_loss",
        "the smooth top-k SVM loss L_{k,tau} (Berrada et al. 2018)", probability_targets=True,
    ),
    LossEntry(
        "hard-svm", topk_svm_loss, TopkSVMLoss, {"k": 5, "alpha": 1.0}, "reference:hard_loss",
        "the hard top-k SVM loss, the tau -> 0 limit of L_{k,tau}", probability_targets=True,
    ),
    LossEntry(
        "hinge-alpha", topk_hinge_alpha_loss, TopkHingeAlphaLoss, {"k": 5, "alpha": 1.0},
        "comparators.references:hinge_alpha", "top-k hinge alpha (Lapin et al.)", **_COMPARATOR,
    ),
    LossEntry(
        "hinge-beta", topk_hinge_beta_loss, TopkHingeBetaLoss, {"k": 5, "alpha": 1.0},
        "comparators.references:hinge_beta", "top-k hinge beta (Lapin et al.)", **_COMPARATOR,
    ),
    LossEntry(
        "trunc-entropy", truncated_topk_entropy_loss, TruncatedTopkEntropyLoss, {"k": 5},
        "comparators.references:truncated_entropy",
        "truncated top-k entropy (Lapin et al. 2016)", **_COMPARATOR,
    ),
    LossEntry(
        "calibrated-hinge", topk_calibrated_hinge_loss, TopkCalibratedHingeLoss,
        {"k": 5, "alpha": 1.0}, "comparators.references:calibrated_hinge",
        "top-k calibrated hinge (Yang & Koyejo 2020)", **_COMPARATOR,
    ),
    LossEntry(
        "smoothed-calibrated-hinge", smoothed_topk_calibrated_hinge_loss,
        SmoothedTopkCalibratedHingeLoss,
        {"k": 5, "epsilon": 1.0, "n_samples": 5, "alpha": 1.0, "class_margins": None,
         "scale": 1.0, "generator": None},
        None, "Gaussian-smoothed top-k calibrated hinge (Garcin et al. 2022, pytopk)",
        stochastic=True, **_COMPARATOR,
    ),
    LossEntry(
        "ce-label-smoothing", label_smoothing_cross_entropy, LabelSmoothingCrossEntropyLoss,
        {"label_smoothing": 0.1}, "comparators.references:label_smoothing_ce",
        "cross-entropy with label smoothing (Szegedy et al. 2016)", **_COMPARATOR,
    ),
    LossEntry(
        "ce-logit-adjusted", logit_adjusted_cross_entropy, LogitAdjustedCrossEntropyLoss,
        {"tau_la": 1.0, "class_counts": None}, "comparators.references:logit_adjusted_ce",
        "cross-entropy with logit adjustment, CE(s + tau log prior) (Menon et al. 2021)",
        **_COMPARATOR,
    ),
    LossEntry(
        "smooth-svm-ldam", ldam_smooth_topk_svm_loss, LDAMSmoothTopkSVMLoss,
        {"k": 5, "tau": 1.0, "max_margin": 1.0, "class_counts": None},
        "reference:ldam_brute_force_loss",
        "L_{k,tau} with LDAM margins alpha_c = m (min n / n_c)^(1/4) (Cao et al. 2019)",
    ),
    LossEntry(
        "smoothed-calibrated-hinge-ldam", ldam_smoothed_topk_calibrated_hinge_loss,
        LDAMSmoothedTopkCalibratedHingeLoss,
        {"k": 5, "epsilon": 1.0, "n_samples": 5, "max_margin": 0.5, "class_counts": None,
         "scale": 1.0, "generator": None},
        None, "smoothed calibrated hinge with LDAM class margins (pytopk ImbalNoisedTopK)",
        stochastic=True, **_COMPARATOR,
    ),
]  # fmt: skip
if difftopk_available():
    _SPECS.append(
        LossEntry(
            "difftopk",
            difftopk_cross_entropy_loss,
            DiffTopkCrossEntropyLoss,
            {
                "k": 5,
                "p_k": None,
                "diffsort_method": "odd_even",
                "inverse_temperature": 2.0,
                "m": None,
                "distribution": "cauchy",
                "art_lambda": 0.5,
                "top1_mode": "sm",
            },
            None,
            "difftopk's TopKCrossEntropyLoss (Petersen et al. 2022)",
            float32_only=True,
            **_COMPARATOR,
        )  # fmt: skip
    )

#: name -> :class:`LossEntry`, every loss of the package (read-only).
LOSSES: Mapping[str, LossEntry] = MappingProxyType({spec.name: spec for spec in _SPECS})


def get(name: str) -> LossEntry:
    """The entry of loss ``name``; a ``ValueError`` listing the names for an unknown one."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]


def comparators() -> dict[str, type[nn.Module]]:
    """The comparators of the literature (the ``comparator`` entries), name -> Module."""
    return {name: spec.module for name, spec in LOSSES.items() if spec.comparator}
