"""``nn.Module`` forms of the losses: thin wrappers that store the hyper-parameters.

Example:
    >>> import torch
    >>> from smoothtopk import SmoothTopkSVMLoss
    >>> criterion = SmoothTopkSVMLoss(k=5, tau=1.0, alpha=1.0)
    >>> criterion
    SmoothTopkSVMLoss(k=5, tau=1.0, alpha=1.0, reduction='mean')
    >>> loss = criterion(torch.randn(8, 10), torch.randint(0, 10, (8,)))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._validation import (
    check_ignore_index,
    check_k,
    check_label_smoothing,
    check_margin_tensor,
    check_margin_values,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_reduction,
)
from .hard_topk import topk_svm_loss
from .linear import linear_smooth_topk_svm_loss
from .smooth_topk import smooth_topk_svm_loss


class _WeightedLoss(nn.Module):
    """Base of every loss module: ``weight`` (a buffer: it follows ``.to()`` and the state dict),
    ``ignore_index`` and ``reduction`` as in ``nn.CrossEntropyLoss``.

    A subclass sets ``functional`` (the loss function) and ``hyper_parameters`` (the names of
    its own arguments, stored as attributes of the same names); ``forward`` and the repr follow.
    Every argument is checked at construction (``k`` against the number of classes at each call).
    """

    functional: Callable[..., torch.Tensor]
    hyper_parameters: tuple[str, ...] = ()
    #: hyper-parameters left out of the repr at these values (``label_smoothing=0.0``)
    quiet_defaults: dict = {"label_smoothing": 0.0}

    def __init__(self, weight: torch.Tensor | None, ignore_index: int, reduction: str) -> None:
        super().__init__()
        if weight is not None and not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        self.register_buffer("weight", weight)
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hyper = {name: getattr(self, name) for name in self.hyper_parameters}
        return type(self).functional(
            input,
            target,
            **hyper,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def _set_alpha(self, alpha) -> None:
        """A float margin as an attribute; per-class margins ``(C,)`` as the buffer ``alpha``
        (it follows ``.to()`` and the state dict, as ``weight``)."""
        if isinstance(alpha, torch.Tensor) and alpha.numel() != 1:
            check_margin_tensor(alpha, None)  # against the number of classes at each call
            check_margin_values(alpha)
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = check_non_negative(alpha, "alpha")

    def extra_repr(self) -> str:
        quiet = self.quiet_defaults
        hyper = [
            f"{name}={_short(getattr(self, name))}"
            for name in self.hyper_parameters
            if not (name in quiet and getattr(self, name) == quiet[name])
        ]
        return ", ".join([*hyper, self._common_repr()])

    def _common_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.weight is not None:
            parts.append(f"weight={_short(self.weight)}")
        return ", ".join(parts)


def _short(value) -> str:
    """The repr of a hyper-parameter; a tensor (per-class margins, weights) by its shape."""
    return f"<{tuple(value.shape)} tensor>" if isinstance(value, torch.Tensor) else repr(value)


class SmoothTopkSVMLoss(_WeightedLoss):
    r"""Module form of :func:`smoothtopk.smooth_topk_svm_loss`, a drop-in for
    ``nn.CrossEntropyLoss``: :math:`L_{k,\tau}`, the temperature-``tau`` smoothing of the top-k
    hinge with margin ``alpha`` (cross-entropy at ``k=1, tau=1, alpha=0``). Per-class margins
    ``alpha`` (a ``(C,)`` tensor, e.g. :func:`smoothtopk.ldam_margins`) are stored as a buffer,
    so ``.to()`` moves them with the module.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)``; target: ``()``, ``(N)`` or
          ``(N, d1, ...)`` class indices, or class probabilities of the input's shape;
          output: a scalar, or ``(N, d1, ...)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> criterion = SmoothTopkSVMLoss(k=2, tau=1.0, alpha=1.0, weight=torch.ones(4))
        >>> scores = torch.randn(3, 4, requires_grad=True)
        >>> criterion(scores, torch.tensor([0, 3, 1])).backward()
        >>> scores.grad.shape
        torch.Size([3, 4])
    """

    functional = staticmethod(smooth_topk_svm_loss)
    hyper_parameters = ("k", "tau", "alpha", "label_smoothing")

    def __init__(
        self,
        k: int = 5,
        tau: float = 1.0,
        alpha: float | torch.Tensor = 1.0,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.k = check_k(k, None)  # against the number of classes at each call
        self.tau = check_positive(tau, "tau")
        self._set_alpha(alpha)
        self.label_smoothing = check_label_smoothing(label_smoothing)


class TopkSVMLoss(_WeightedLoss):
    r"""Module form of :func:`smoothtopk.topk_svm_loss`, the hard top-k hinge
    :math:`\max(0, \alpha + ((s_{\setminus y})_{[k]} - s_y) / k)`.

    Shape:
        - as :class:`SmoothTopkSVMLoss`.

    Example:
        >>> import torch
        >>> TopkSVMLoss(k=2, alpha=1.0)(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([2]))
        tensor(1.5000)
    """

    functional = staticmethod(topk_svm_loss)
    hyper_parameters = ("k", "alpha", "label_smoothing")

    def __init__(
        self,
        k: int = 5,
        alpha: float | torch.Tensor = 1.0,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        self.k = check_k(k, None)  # against the number of classes at each call
        self._set_alpha(alpha)
        self.label_smoothing = check_label_smoothing(label_smoothing)


class LinearSmoothTopkSVMLoss(_WeightedLoss):
    r"""A linear classifier and its smooth top-k SVM loss, fused
    (:func:`smoothtopk.linear_smooth_topk_svm_loss`): the logits are never formed whole. The
    Module owns its layer, ``self.linear = nn.Linear(in_features, num_classes, bias=bias)``, as
    ``nn.LinearCrossEntropyLoss`` does; ``forward(input, target)`` takes the features.

    Shape:
        - input: ``(N, in_features)`` or ``(in_features)``; target: ``(N)`` or ``()`` class
          indices, or class probabilities ``(N, num_classes)`` or ``(num_classes)``; output: a
          scalar, or ``(N)`` or ``()`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> criterion = LinearSmoothTopkSVMLoss(16, 1000, k=5, bias=True)
        >>> criterion
        LinearSmoothTopkSVMLoss(
          in_features=16, num_classes=1000, k=5, tau=1.0, alpha=1.0, reduction='mean'
          (linear): Linear(in_features=16, out_features=1000, bias=True)
        )
        >>> loss = criterion(torch.randn(8, 16), torch.randint(0, 1000, (8,)))
        >>> loss.backward()
        >>> criterion.linear.weight.grad.shape
        torch.Size([1000, 16])
    """

    functional = staticmethod(linear_smooth_topk_svm_loss)
    hyper_parameters = ("k", "tau", "alpha", "label_smoothing")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        bias: bool = False,
        k: int = 5,
        tau: float = 1.0,
        alpha: float | torch.Tensor = 1.0,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        chunk_size: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(weight, ignore_index, reduction)
        in_features = check_positive_int(in_features, "in_features")
        num_classes = check_positive_int(num_classes, "num_classes")
        self.k = check_k(k, num_classes)
        self.tau = check_positive(tau, "tau")
        self._set_alpha(alpha)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.chunk_size = None if chunk_size is None else check_positive_int(
            chunk_size, "chunk_size")  # fmt: skip
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hyper = {name: getattr(self, name) for name in self.hyper_parameters}
        return linear_smooth_topk_svm_loss(
            input,
            self.linear.weight,
            target,
            linear_bias=self.linear.bias,
            **hyper,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        layer = f"in_features={self.linear.in_features}, num_classes={self.linear.out_features}"
        chunk = "" if self.chunk_size is None else f", chunk_size={self.chunk_size}"
        return f"{layer}, {super().extra_repr()}{chunk}"
