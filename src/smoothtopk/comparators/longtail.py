r"""Losses for long-tailed training data, built from the training-set class counts ``n_c``.

* Logit-adjusted cross-entropy (Menon, Jayasumana, Rawat, Jain, Veit and Kumar, "Long-tail
  learning via logit adjustment", ICLR 2021, the loss form, their eq. 10):

  .. math::

      L(s, y) = -\log \frac{e^{s_y + \tau \log \pi_y}}{\sum_c e^{s_c + \tau \log \pi_c}},
      \qquad \pi_c = n_c / \textstyle\sum_{c'} n_{c'},

  i.e. ``F.cross_entropy(s + tau_la * log(prior), y)``. Only training shifts the logits: the
  model's raw scores ``s`` are what is evaluated.
* The smooth top-k SVM loss :math:`L_{k,\tau}` with LDAM margins (Cao et al., NeurIPS 2019):
  sample ``i`` uses the margin ``alpha[y_i]`` of :func:`smoothtopk.ldam_margins`,
  :math:`\alpha_c = m (\min_{c'} n_{c'} / n_c)^{1/4}` with ``m = max_margin``.
* The smoothed top-k calibrated hinge with pytopk's imbalanced margins (Garcin et al., ICML
  2022, ``ImbalNoisedTopK``): :func:`~smoothtopk.comparators.smoothed_topk_calibrated_hinge_loss`
  with ``class_margins`` the same LDAM margins (``max_margin`` 0.5 by default, as pytopk).

``class_counts=None`` means balanced classes: the prior is uniform (a constant shift, so plain
cross-entropy) and every LDAM margin is ``max_margin``. Counts may be a tensor on any device or
a list of numbers, each finite and ``> 0`` (checked on the host for CPU counts outside
torch.compile, by an asynchronous device assertion otherwise: no device waits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._convention import classification_loss, num_classes_of, working_dtype
from .._validation import (
    check_input_target,
    check_k,
    check_non_negative,
    check_positive,
    check_positive_int,
    keyword_only,
)
from ..margins import _check_counts, ldam_margins
from ..modules import _WeightedLoss
from ..smooth_topk import smooth_topk_svm_loss
from .calibrated import _check_generator, smoothed_topk_calibrated_hinge_loss

__all__ = [
    "LDAMSmoothTopkSVMLoss",
    "LDAMSmoothedTopkCalibratedHingeLoss",
    "LogitAdjustedCrossEntropyLoss",
    "ldam_smooth_topk_svm_loss",
    "ldam_smoothed_topk_calibrated_hinge_loss",
    "logit_adjusted_cross_entropy",
]


def class_counts_for(class_counts, input) -> torch.Tensor:
    """``class_counts`` checked (finite, ``> 0``, one per class of ``input``) as float64 on
    their own device; an input that is not a score tensor is left to the loss's own checks."""
    counts = _check_counts(class_counts)
    if isinstance(input, torch.Tensor) and input.dim() >= 1:
        num_classes = num_classes_of(input)
        if tuple(counts.shape) != (num_classes,):
            raise ValueError(
                f"class_counts must have shape ({num_classes},) (one count per class), "
                f"got {tuple(counts.shape)}"
            )
    return counts


def _counts_buffer(class_counts) -> torch.Tensor | None:
    """A Module's counts: checked at construction, kept as a tensor (a buffer)."""
    if class_counts is None:
        return None
    _check_counts(class_counts)
    if isinstance(class_counts, torch.Tensor):
        return class_counts
    return torch.tensor(class_counts, dtype=torch.float64)


@keyword_only
def logit_adjusted_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    tau_la: float = 1.0,
    class_counts: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Logit-adjusted cross-entropy (Menon et al. 2021): ``CE(s + τ log π, y)``.

    :math:`\pi_c = n_c / \sum_{c'} n_{c'}` from ``class_counts`` (computed in float64, then
    cast to the working dtype); ``tau_la = 0`` or balanced counts give plain cross-entropy.

    Args:
        input: scores ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``()``, ``(N)`` or ``(N, d1, ...)``.
        tau_la: the adjustment's strength ``τ >= 0`` (1 in the paper).
        class_counts: training samples per class ``(C,)``, each ``> 0``; ``None``: balanced.
        weight, ignore_index, reduction: as in ``torch.nn.functional.cross_entropy``.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> s, y, n = torch.randn(4, 3), torch.tensor([0, 1, 2, 2]), torch.tensor([90, 9, 1])
        >>> loss = logit_adjusted_cross_entropy(s, y, tau_la=1.0, class_counts=n)
        >>> shifted = s + torch.log(n / n.sum())
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(shifted, y))
        True
    """
    tau_la = check_non_negative(tau_la, "tau_la")
    log_prior = None
    if class_counts is not None:
        counts = class_counts_for(class_counts, input)
        log_prior = tau_la * (counts / counts.sum()).log()

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        if log_prior is not None:
            scores = scores + log_prior.to(scores.device, scores.dtype)
        return F.cross_entropy(scores, safe_target, reduction="none")

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)


@keyword_only
def ldam_smooth_topk_svm_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    tau: float = 1.0,
    max_margin: float = 1.0,
    class_counts: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r""":math:`L_{k,\tau}` with LDAM margins ``alpha = ldam_margins(class_counts, max_margin)``.

    ``smooth_topk_svm_loss(input, target, k=k, tau=tau, alpha=alpha)`` with the margins in the
    working dtype on the input's device (``alpha = max_margin`` without counts).

    Args:
        input, target, k, tau, weight, ignore_index, reduction: as in
            :func:`smoothtopk.smooth_topk_svm_loss`.
        max_margin: the margin of the rarest class, ``>= 0``.
        class_counts: training samples per class ``(C,)``, each ``> 0``; ``None``: balanced.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from smoothtopk import ldam_margins, smooth_topk_svm_loss
        >>> s, y, n = torch.randn(4, 3), torch.tensor([0, 1, 2, 2]), torch.tensor([81, 16, 1])
        >>> loss = ldam_smooth_topk_svm_loss(s, y, k=2, class_counts=n)
        >>> bool(loss == smooth_topk_svm_loss(s, y, k=2, alpha=ldam_margins(n)))
        True
    """
    check_input_target(input, target)  # class indices: the LDAM margin is that of the target
    max_margin = check_non_negative(max_margin, "max_margin")
    alpha = max_margin
    if class_counts is not None:
        counts = class_counts_for(class_counts, input)
        dtype = working_dtype(input.dtype) if isinstance(input, torch.Tensor) else torch.float64
        alpha = ldam_margins(counts, max_margin, dtype=dtype)
        alpha = alpha.to(input.device) if isinstance(input, torch.Tensor) else alpha
    return smooth_topk_svm_loss(
        input, target, k=k, tau=tau, alpha=alpha, weight=weight, ignore_index=ignore_index,
        reduction=reduction,
    )  # fmt: skip


@keyword_only
def ldam_smoothed_topk_calibrated_hinge_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    epsilon: float = 1.0,
    n_samples: int = 5,
    max_margin: float = 0.5,
    class_counts: torch.Tensor | None = None,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """The smoothed calibrated hinge with pytopk's imbalanced (LDAM) margins.

    :func:`~smoothtopk.comparators.smoothed_topk_calibrated_hinge_loss` with
    ``class_margins = ldam_margins(class_counts, max_margin)`` (in float64, cast to the working
    dtype), or ``alpha = max_margin`` without counts.

    Args:
        input, target, k, epsilon, n_samples, scale, generator, weight, ignore_index,
            reduction: as in :func:`~smoothtopk.comparators.smoothed_topk_calibrated_hinge_loss`.
        max_margin: the margin of the rarest class, ``>= 0`` (0.5 in pytopk).
        class_counts: training samples per class ``(C,)``, each ``> 0``; ``None``: balanced.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> s, y, n = torch.randn(4, 3), torch.tensor([0, 1, 2, 2]), torch.tensor([81, 16, 1])
        >>> loss = ldam_smoothed_topk_calibrated_hinge_loss(
        ...     s, y, k=1, class_counts=n, generator=g)
    """
    max_margin = check_non_negative(max_margin, "max_margin")
    margins = None
    if class_counts is not None:
        counts = class_counts_for(class_counts, input)
        margins = ldam_margins(counts, max_margin, dtype=torch.float64)
        margins = margins.to(input.device) if isinstance(input, torch.Tensor) else margins
    return smoothed_topk_calibrated_hinge_loss(
        input, target, k=k, epsilon=epsilon, n_samples=n_samples, alpha=max_margin,
        class_margins=margins, scale=scale, generator=generator, weight=weight,
        ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip


class LogitAdjustedCrossEntropyLoss(_WeightedLoss):
    """Module form of :func:`logit_adjusted_cross_entropy`; ``class_counts`` is a buffer."""

    functional = staticmethod(logit_adjusted_cross_entropy)
    hyper_parameters = ("tau_la", "class_counts")

    def __init__(
        self,
        tau_la: float = 1.0,
        class_counts: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.tau_la = check_non_negative(tau_la, "tau_la")
        self.register_buffer("class_counts", _counts_buffer(class_counts))


class LDAMSmoothTopkSVMLoss(_WeightedLoss):
    """Module form of :func:`ldam_smooth_topk_svm_loss`; ``class_counts`` is a buffer."""

    functional = staticmethod(ldam_smooth_topk_svm_loss)
    hyper_parameters = ("k", "tau", "max_margin", "class_counts")

    def __init__(
        self,
        k: int = 5,
        tau: float = 1.0,
        max_margin: float = 1.0,
        class_counts: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.k = check_k(k, None)  # against the number of classes at each call
        self.tau = check_positive(tau, "tau")
        self.max_margin = check_non_negative(max_margin, "max_margin")
        self.register_buffer("class_counts", _counts_buffer(class_counts))


class LDAMSmoothedTopkCalibratedHingeLoss(_WeightedLoss):
    """Module form of :func:`ldam_smoothed_topk_calibrated_hinge_loss`; ``class_counts`` is a
    buffer, ``generator`` a plain attribute (each forward call advances it)."""

    functional = staticmethod(ldam_smoothed_topk_calibrated_hinge_loss)
    hyper_parameters = ("k", "epsilon", "n_samples", "max_margin", "class_counts", "scale",
                        "generator")  # fmt: skip

    def __init__(
        self,
        k: int = 5,
        epsilon: float = 1.0,
        n_samples: int = 5,
        max_margin: float = 0.5,
        class_counts: torch.Tensor | None = None,
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        _check_generator(generator)
        self.k = check_k(k, None)  # against the number of classes at each call
        self.epsilon = check_positive(epsilon, "epsilon")
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.max_margin = check_non_negative(max_margin, "max_margin")
        self.register_buffer("class_counts", _counts_buffer(class_counts))
        self.scale = check_positive(scale, "scale")
        self.generator = generator
