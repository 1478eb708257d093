"""Adapter for difftopk's ``TopKCrossEntropyLoss`` (Petersen et al., ICML 2022), optional.

difftopk relaxes top-k membership with a differentiable sorting network and mixes over a
distribution ``p_k`` on ``k``: for each class ``c`` it forms
``P(c in top-k) = p_1 · softmax(s)_c + Σ_{k'>=2} p_k' · P_topk[c, top k']`` (``top1_mode="sm"``)
and takes the negative log of that probability at the target. We use the published module
unchanged; this adapter only

* builds it (lazily, per number of classes and device, cached) from our hyper-parameters,
* evaluates it one score vector at a time (``torch.func.vmap`` over the rows, or a loop where
  vmap cannot batch the published code, e.g. with ``m``), because the published module only
  returns a batch mean, and the package contract needs per-sample losses for ``weight``,
  ``ignore_index`` and ``reduction``. The batch mean of the published module equals our
  ``reduction="mean"`` result without ``weight``.

The published sorting networks are float32, so inputs are evaluated in float32 and the result
is cast back to the input dtype. difftopk (and its dependency diffsort) are not required by
this package: install them (``pip install difftopk diffsort``, or the ``bench`` extra) to use
this loss; :func:`difftopk_available` tells whether they are present.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import math
import numbers

import torch

from .._convention import classification_loss
from .._validation import check_k, check_positive, keyword_only
from ..modules import _WeightedLoss

__all__ = ["DiffTopkCrossEntropyLoss", "difftopk_available", "difftopk_cross_entropy_loss"]

_METHODS = (
    "odd_even",
    "bitonic",
    "bitonic__non_sparse",
    "splitter_selection",
    "neuralsort",
    "softsort",
)
_TOP1_MODES = ("sm", "smce", "sort")


def difftopk_available() -> bool:
    """True when the optional packages ``difftopk`` and ``diffsort`` are importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("difftopk", "diffsort"))


def _import_difftopk():
    # difftopk prints a notice about the optional torch_sparse on import; keep logs clean.
    with contextlib.redirect_stdout(io.StringIO()):
        import difftopk
    return difftopk


@functools.lru_cache(maxsize=8)
def _published_loss(
    num_classes, device, p_k, method, inverse_temperature, m, distribution, art_lambda, top1_mode
):
    difftopk = _import_difftopk()
    return difftopk.TopKCrossEntropyLoss(
        diffsort_method=method,
        inverse_temperature=inverse_temperature,
        p_k=list(p_k),
        n=num_classes,
        m=m,
        distribution=distribution,
        art_lambda=art_lambda,
        device=device,
        top1_mode=top1_mode,
    )


def _default_p_k(k: int) -> tuple[float, ...]:
    """Half the mass on top-1 and half on top-k, the setting of the difftopk examples."""
    if k == 1:
        return (1.0,)
    return (0.5,) + (0.0,) * (k - 2) + (0.5,)


def _check_p_k(p_k, k: int) -> tuple[float, ...]:
    if p_k is None:
        return _default_p_k(k)
    if isinstance(p_k, (str, bytes)) or not hasattr(p_k, "__len__"):
        raise TypeError(f"p_k must be a sequence of numbers or None, got {type(p_k).__name__}")
    values = []
    for value in p_k:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"p_k must hold real numbers, got {type(value).__name__}")
        values.append(float(value))
    if len(values) != k:
        raise ValueError(f"p_k must have k={k} entries (p_k[i] is P(top-(i+1))), got {len(values)}")
    if any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-4:
        raise ValueError(f"p_k must be a probability distribution (>= 0, sum 1), got {values}")
    return tuple(values)


def _check_choice(value, choices, name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_m(m, k: int, num_classes: int) -> int | None:
    if m is None:
        return None
    if isinstance(m, bool) or not isinstance(m, numbers.Integral):
        raise TypeError(f"m must be an int or None, got {type(m).__name__}")
    if not k < m < num_classes:
        raise ValueError(f"m must satisfy k ({k}) < m < number of classes ({num_classes}), got {m}")
    return int(m)


@keyword_only
def difftopk_cross_entropy_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    k: int = 5,
    p_k=None,
    diffsort_method: str = "odd_even",
    inverse_temperature: float = 2.0,
    m: int | None = None,
    distribution: str = "cauchy",
    art_lambda: float = 0.5,
    top1_mode: str = "sm",
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """difftopk's ``TopKCrossEntropyLoss`` under the package's calling convention.

    Args:
        input: scores ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``()``, ``(N)`` or ``(N, d1, ...)``.
        k: the largest ``k`` of the mixture, ``1 <= k < C``.
        p_k: ``k`` probabilities, ``p_k[i]`` the weight of top-(i+1); default half on top-1
            and half on top-k.
        diffsort_method, inverse_temperature, m, distribution, art_lambda, top1_mode: passed to
            ``difftopk.TopKCrossEntropyLoss`` (``m``: optional pre-selection of the ``m``
            largest scores, ``k < m < C``; recommended for large ``C``).
        weight, ignore_index, reduction: as in ``torch.nn.functional.cross_entropy``.

    Raises:
        ModuleNotFoundError: if difftopk or diffsort is not installed.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)``; output: a scalar, or the target's shape for ``reduction="none"``.

    Example (needs the optional packages, so not run by the doctests):
        >>> import torch
        >>> scores = torch.randn(4, 10, requires_grad=True)
        >>> difftopk_cross_entropy_loss(scores, torch.tensor([0, 1, 2, 3]), k=5)  # doctest: +SKIP
    """
    if not isinstance(k, numbers.Integral) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    p_k = _check_p_k(p_k, int(k))
    diffsort_method = _check_choice(diffsort_method, _METHODS, "diffsort_method")
    top1_mode = _check_choice(top1_mode, _TOP1_MODES, "top1_mode")
    inverse_temperature = check_positive(inverse_temperature, "inverse_temperature")
    art_lambda = check_positive(art_lambda, "art_lambda")
    if not difftopk_available():
        raise ModuleNotFoundError(
            "difftopk_cross_entropy_loss needs the optional packages difftopk and diffsort "
            "(pip install difftopk diffsort)"
        )

    def per_sample(scores: torch.Tensor, safe_target: torch.Tensor) -> torch.Tensor:
        num_rows, num_classes = scores.shape
        kk = check_k(k, num_classes)
        mm = _check_m(m, kk, num_classes)
        published = _published_loss(
            num_classes,
            str(scores.device),
            p_k,
            diffsort_method,
            inverse_temperature,
            mm,
            distribution,
            art_lambda,
            top1_mode,
        )
        x = scores.float()
        if num_rows == 0:
            return scores.new_zeros(0)

        def one(row: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return published(row.unsqueeze(0), label.unsqueeze(0))

        losses = None
        if mm is None:
            try:
                losses = torch.func.vmap(one)(x, safe_target)
            except RuntimeError:  # an operator vmap cannot batch: evaluate row by row
                losses = None
        if losses is None:
            losses = torch.stack([one(x[i], safe_target[i]) for i in range(num_rows)])
        return losses.to(scores.dtype)

    return classification_loss(per_sample, input, target, weight, ignore_index, reduction)


class DiffTopkCrossEntropyLoss(_WeightedLoss):
    """Module form of :func:`difftopk_cross_entropy_loss` (needs difftopk and diffsort)."""

    functional = staticmethod(difftopk_cross_entropy_loss)
    hyper_parameters = (
        "k",
        "p_k",
        "diffsort_method",
        "inverse_temperature",
        "m",
        "distribution",
        "art_lambda",
        "top1_mode",
    )

    def __init__(
        self,
        k: int = 5,
        p_k=None,
        diffsort_method: str = "odd_even",
        inverse_temperature: float = 2.0,
        m: int | None = None,
        distribution: str = "cauchy",
        art_lambda: float = 0.5,
        top1_mode: str = "sm",
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        if not isinstance(k, numbers.Integral) or isinstance(k, bool):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        self.k = int(k)
        self.p_k = _check_p_k(p_k, self.k)
        self.diffsort_method = _check_choice(diffsort_method, _METHODS, "diffsort_method")
        self.inverse_temperature = check_positive(inverse_temperature, "inverse_temperature")
        self.m = m
        self.distribution = distribution
        self.art_lambda = check_positive(art_lambda, "art_lambda")
        self.top1_mode = _check_choice(top1_mode, _TOP1_MODES, "top1_mode")

    def extra_repr(self) -> str:
        parts = [
            f"k={self.k}",
            f"p_k={self.p_k}",
            f"diffsort_method={self.diffsort_method!r}",
            f"inverse_temperature={self.inverse_temperature}",
        ]
        if self.m is not None:
            parts.append(f"m={self.m}")
        parts += [
            f"distribution={self.distribution!r}",
            f"art_lambda={self.art_lambda}",
            f"top1_mode={self.top1_mode!r}",
            self._common_repr(),
        ]
        return ", ".join(parts)
