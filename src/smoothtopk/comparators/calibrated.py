"""Top-k calibrated hinge (Yang & Koyejo) and its stochastic smoothing (Garcin et al.).

Top-k calibrated hinge (Yang and Koyejo, "On the Consistency of Top-k Surrogate Losses",
ICML 2020):

    L(s, y) = max(0, α + s_[k+1] − s_y)

with ``s_[k+1]`` the (k+1)-th largest of *all* the scores, the target's included, and ``α = 1``
in the paper. It is zero exactly when ``s_y`` beats the (k+1)-th largest score by the margin,
i.e. when ``y`` is safely in the top k.

Stochastically smoothed calibrated hinge (Garcin, Servajean, Joly and Salmon, "Stochastic
smoothing of the top-K calibrated hinge loss for deep imbalanced classification", ICML 2022;
reference code: PyPI ``pytopk``, ``BalNoisedTopK`` / ``ImbalNoisedTopK``): the (k+1)-th largest
score is replaced by its Gaussian smoothing

    s_[k+1]^ε = E_Z[(s + εZ)_[k+1]],  Z ~ N(0, I),

estimated with ``B = n_samples`` Monte Carlo draws, and

    L(s, y) = scale · max(0, m_y + s_[k+1]^ε − s_y)

where ``m_y = α`` (the balanced loss) or, for imbalanced data, a per-class margin
``class_margins[y]`` (LDAM-style; see :func:`ldam_class_margins`). The gradient of the smoothed
(k+1)-th largest score is the perturbed-optimizer estimate of the paper,
``∇ s_[k+1]^ε ≈ (1/B) Σ_b e_{i_b}`` with ``i_b`` the index of the (k+1)-th largest entry of
``s + εZ_b``: exactly what autograd returns through the Monte Carlo forward, since
``∂(s + εZ_b)/∂s = I``. The draws come from ``generator`` (or the global RNG when it is
``None``), so a fixed seed reproduces both values and gradients. As ε → 0 the loss tends to the
hard calibrated hinge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._convention import classification_loss
from .._validation import (
    check_k,
    check_non_negative,
    check_positive,
    check_positive_int,
    keyword_only,
)
from ..margins import ldam_margins
from ..modules import _WeightedLoss

__all__ = [
    "SmoothedTopkCalibratedHingeLoss",
    "TopkCalibratedHingeLoss",
    "ldam_class_margins",
    "smoothed_topk_calibrated_hinge_loss",
    "topk_calibrated_hinge_loss",
]


@keyword_only
def topk_calibrated_hinge_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    alpha: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Top-k calibrated hinge (Yang & Koyejo 2020): ``max(0, α + s_[k+1] − s_y)``.

    Args:
        input: scores ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``()``, ``(N)`` or ``(N, d1, ...)``.
        k: ``1 <= k < C``; ``s_[k+1]`` is taken over all ``C`` scores, target included.
        alpha: margin ``>= 0`` (``1`` in the paper).
        weight, ignore_index, reduction: as in ``torch.nn.functional.cross_entropy``.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> topk_calibrated_hinge_loss(torch.tensor([[3.0, 2.0, 0.5]]), torch.tensor([1]), k=1)
        tensor(1.)
    """
    alpha = check_non_negative(alpha, "alpha")

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        kk = check_k(k, scores.shape[1])
        true_score = scores.gather(1, safe_target[:, None]).squeeze(1)
        kth = scores.topk(kk + 1, dim=1).values[:, kk]
        return F.relu(alpha + kth - true_score)

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)


def ldam_class_margins(class_counts, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM per-class margins ``m_c ∝ n_c^{-1/4}``, the largest ``max_margin`` (default 0.5, as
    in pytopk): :func:`smoothtopk.ldam_margins` in float32, the one owner of the formula.

    This is the margin schedule of Cao et al. (NeurIPS 2019) that Garcin et al. use for their
    imbalanced loss: rarer classes get larger margins.

    Example:
        >>> ldam_class_margins([16, 1])
        tensor([0.2500, 0.5000])
    """
    return ldam_margins(class_counts, max_margin, dtype=torch.float32)


def _check_class_margins(class_margins, num_classes: int, device: torch.device) -> None:
    if not isinstance(class_margins, torch.Tensor):
        raise TypeError(
            f"class_margins must be a torch.Tensor or None, got {type(class_margins).__name__}"
        )
    if not class_margins.is_floating_point():
        raise TypeError(
            f"class_margins must be a floating-point tensor, got dtype {class_margins.dtype}"
        )
    if tuple(class_margins.shape) != (num_classes,):
        raise ValueError(
            f"class_margins must have shape ({num_classes},) (one entry per class), "
            f"got {tuple(class_margins.shape)}"
        )
    if class_margins.device != device:
        raise ValueError(f"class_margins is on {class_margins.device} but input is on {device}")


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


@keyword_only
def smoothed_topk_calibrated_hinge_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    epsilon: float = 1.0,
    n_samples: int = 5,
    alpha: float = 1.0,
    class_margins: torch.Tensor | None = None,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Stochastically smoothed top-k calibrated hinge (Garcin et al. 2022, ``pytopk``).

    ``scale · max(0, m_y + E[(s + εZ)_[k+1]] − s_y)`` with the expectation estimated from
    ``n_samples`` standard normal draws per score vector, ``m_y = alpha`` or
    ``class_margins[y]``.

    Args:
        input: scores ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``()``, ``(N)`` or ``(N, d1, ...)``.
        k: ``1 <= k < C``.
        epsilon: smoothing scale ``ε > 0`` (the standard deviation of the perturbation).
        n_samples: number of Monte Carlo draws ``B >= 1`` per score vector.
        alpha: margin ``>= 0`` used when ``class_margins`` is ``None`` (``BalNoisedTopK``).
        class_margins: optional per-class margins ``(C,)`` on the input's device
            (``ImbalNoisedTopK``); see :func:`ldam_class_margins`.
        scale: a positive factor on the loss (``ImbalNoisedTopK`` uses 50 with normalised
            features and weights; keep 1 otherwise).
        generator: the ``torch.Generator`` the noise is drawn from, on the input's device
            type; ``None`` uses the global RNG. The noise ``Z`` has shape ``(M, C, B)`` for the
            ``M`` flattened rows (ignored rows included) and is drawn in the working dtype.
        weight, ignore_index, reduction: as in ``torch.nn.functional.cross_entropy``.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> s = torch.tensor([[2.0, 1.5, -3.0], [7.5, 4.0, -1.5]], requires_grad=True)
        >>> loss = smoothed_topk_calibrated_hinge_loss(
        ...     s, torch.tensor([0, 2]), k=2, epsilon=1.0, n_samples=100, generator=g)
        >>> loss.backward()
    """
    epsilon = check_positive(epsilon, "epsilon")
    n_samples = check_positive_int(n_samples, "n_samples")
    alpha = check_non_negative(alpha, "alpha")
    scale = check_positive(scale, "scale")
    _check_generator(generator)

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        num_rows, num_classes = scores.shape
        kk = check_k(k, num_classes)
        if generator is not None and generator.device.type != scores.device.type:
            raise ValueError(f"generator is on {generator.device} but input is on {scores.device}")
        if class_margins is None:
            margin = alpha
        else:
            _check_class_margins(class_margins, num_classes, scores.device)
            margin = class_margins.to(scores.dtype)[safe_target]
        noise = torch.randn(
            (num_rows, num_classes, n_samples),
            generator=generator,
            device=scores.device,
            dtype=scores.dtype,
        )
        # (M, B, C): each Monte Carlo draw is a perturbed copy of the score vector.
        perturbed = scores.unsqueeze(1) + epsilon * noise.transpose(1, 2)
        # The (k+1)-th largest entry of each draw; autograd sends its gradient to that entry's
        # index only, which averaged over the draws is the perturbed-optimizer gradient.
        kth = perturbed.topk(kk + 1, dim=2).values[:, :, kk]
        smoothed = kth.mean(dim=1)
        true_score = scores.gather(1, safe_target[:, None]).squeeze(1)
        return scale * F.relu(margin + smoothed - true_score)

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)


class TopkCalibratedHingeLoss(_WeightedLoss):
    """Module form of :func:`topk_calibrated_hinge_loss`."""

    functional = staticmethod(topk_calibrated_hinge_loss)
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


class SmoothedTopkCalibratedHingeLoss(_WeightedLoss):
    """Module form of :func:`smoothed_topk_calibrated_hinge_loss`.

    ``class_margins`` is a buffer like ``weight``. ``generator`` is kept as a plain attribute
    (it is state, not a parameter): each forward call advances it.
    """

    functional = staticmethod(smoothed_topk_calibrated_hinge_loss)
    hyper_parameters = ("k", "epsilon", "n_samples", "alpha", "class_margins", "scale", "generator")

    def __init__(
        self,
        k: int = 5,
        epsilon: float = 1.0,
        n_samples: int = 5,
        alpha: float = 1.0,
        class_margins: torch.Tensor | None = None,
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        if class_margins is not None and not isinstance(class_margins, torch.Tensor):
            raise TypeError(
                f"class_margins must be a torch.Tensor or None, got {type(class_margins).__name__}"
            )
        _check_generator(generator)
        self.k = check_k(k, None)  # against the number of classes at each call
        self.epsilon = check_positive(epsilon, "epsilon")
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.alpha = check_non_negative(alpha, "alpha")
        self.scale = check_positive(scale, "scale")
        self.register_buffer("class_margins", class_margins)
        self.generator = generator

    def extra_repr(self) -> str:
        parts = [f"k={self.k}", f"epsilon={self.epsilon}", f"n_samples={self.n_samples}"]
        if self.class_margins is None:
            parts.append(f"alpha={self.alpha}")
        else:
            parts.append(f"class_margins=<{tuple(self.class_margins.shape)} tensor>")
        if self.scale != 1.0:
            parts.append(f"scale={self.scale}")
        if self.generator is not None:
            parts.append("generator=<torch.Generator>")
        parts.append(self._common_repr())
        return ", ".join(parts)
