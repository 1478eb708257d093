"""The calling convention of ``F.cross_entropy``, shared by every loss of the package.

:func:`prepare` checks the arguments (without reading tensor data, except the one documented
CPU-only range check of the targets) and flattens ``(N, C, d1, ...)`` scores to rows ``(M, C)``
with targets ``(M,)``; :func:`finish` restores the target's shape for ``reduction="none"`` and the
input's dtype. The smooth loss hands the rows to one backend operator (:mod:`smoothtopk.backends`);
the other losses are written once as a per-sample function of valid rows and wrapped by
:func:`classification_loss`:

* ``ignore_index`` (those elements give 0, carry no weight and receive no gradient, whatever
  their scores and whatever the weight of class 0), per-class ``weight`` applied as
  ``weight[target]``, and ``reduction`` with the semantics of ``F.cross_entropy``: ``"mean"`` is
  ``sum(weight[t_i] * l_i) / sum(weight[t_i])`` over the non-ignored elements;
* dtypes: float16/bfloat16 are computed in float32 and returned in the input dtype; under
  autocast the input is promoted to float32 first, exactly as autocast treats ``cross_entropy``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch

from ._validation import (
    check_ignore_index,
    check_input_target,
    check_k,
    check_reduction,
    check_target_range,
    check_weight,
    checks_eagerly,
)

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: scores ``(M, C)`` and coefficients ``beta (M, C)`` -> ``sum_c beta_{ic} l_{ic}``, ``(M,)``
RowLosses = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (``torch.autograd.forward_ad.dual_level``), in
    which the losses' classic ``autograd.Function`` must not be skipped. The one reader of
    torch's ``forward_ad._current_level``, which has no public accessor."""
    return torch.autograd.forward_ad._current_level >= 0


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything narrower is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def num_classes_of(input: torch.Tensor) -> int:
    return input.shape[0] if input.dim() == 1 else input.shape[1]


def rows(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C, d1, ...)`` scores and ``(N, d1, ...)`` targets as ``(M, C)`` and ``(M,)``."""
    return score_rows(input), target.reshape(-1).long()


def score_rows(input: torch.Tensor) -> torch.Tensor:
    """``(C)``, ``(N, C)`` or ``(N, C, d1, ...)`` as ``(M, C)`` rows (scores or probabilities)."""
    if input.dim() == 1:
        return input.unsqueeze(0)
    if input.dim() == 2:
        return input
    return input.movedim(1, -1).reshape(-1, input.shape[1])


def row_poison(scores: torch.Tensor) -> torch.Tensor:
    """``(M,)``: 0 for a row of finite or ``-inf`` scores, NaN for a row with a NaN or ``+inf``
    score (added to a row's losses: NaN in, NaN out, as ``F.cross_entropy``; no gradient)."""
    clipped = scores.detach().clamp_min(0.0)
    return (clipped - clipped).sum(dim=1)


def row_weights(weight, target: torch.Tensor, valid: torch.Tensor, dtype) -> torch.Tensor:
    """``weight[t_i]`` (1 without weight) for kept rows, exactly 0 for ignored ones: the weight
    of an ignored row's placeholder class is never read into a product."""
    if weight is None:
        return valid.to(dtype)
    return torch.where(valid, weight.to(dtype)[target], 0.0)


def reduce(losses: torch.Tensor, weights: torch.Tensor, reduction: str, total=None):
    """``F.cross_entropy``'s reductions of weighted per-row losses (0 on ignored rows);
    ``total``: ``weights.sum()`` when the caller has it already."""
    if reduction == "none":
        return losses
    out = losses.sum()
    if reduction == "sum":
        return out
    return out / (weights.sum() if total is None else total)


def row_gradients(grad_out: torch.Tensor, weights: torch.Tensor, reduction: str) -> torch.Tensor:
    """d out / d l_i for every row: the transpose of :func:`reduce`."""
    if reduction == "mean":
        return grad_out * weights / weights.sum()
    return grad_out * weights


class Rows(NamedTuple):
    scores: torch.Tensor  # (M, C), the input's dtype (float32 under autocast)
    target: torch.Tensor  # (M,) int64: a class in [0, C) or ignore_index
    shape: torch.Size  # the target's shape, for reduction="none"
    dtype: torch.dtype  # the dtype of the result
    autocast: bool  # whether autocast was on (and is turned off around the computation)
    targets_checked: bool  # False: the device form of the range check is left to the caller


def prepare(
    input, target, k, weight, ignore_index, reduction, device_check=True, probabilities=False
) -> Rows:
    """Check every argument of a loss call (``k`` against the number of classes unless None)
    and flatten to rows. ``device_check=False`` leaves the asynchronous device form of the
    targets' range check (:func:`check_target_range`) to the caller, whose kernel may check the
    targets itself (``Rows.targets_checked`` says whether it is done). ``probabilities``: the
    loss also takes class probabilities, which become ``Rows.target`` ``(M, C)`` (as the
    scores; ``ignore_index`` plays no part, as in ``F.cross_entropy``)."""
    check_input_target(input, target, probabilities)
    check_reduction(reduction)
    check_ignore_index(ignore_index)
    num_classes = num_classes_of(input)
    check_weight(weight, num_classes, input.device)
    if k is not None:
        check_k(k, num_classes)
    autocast = input.device.type != "meta" and torch.is_autocast_enabled(input.device.type)
    if autocast:
        input = input.float()
    if target.is_floating_point():  # class probabilities, the input's shape
        shape = torch.Size((input.shape[0], *input.shape[2:]) if input.dim() > 1 else ())
        return Rows(score_rows(input), score_rows(target), shape, input.dtype, autocast, True)
    scores, flat_target = rows(input, target)
    checked = device_check or checks_eagerly(flat_target)
    if checked:
        check_target_range(flat_target, num_classes, ignore_index)
    return Rows(scores, flat_target, target.shape, input.dtype, autocast, checked)


def finish(out: torch.Tensor, call: Rows, reduction: str) -> torch.Tensor:
    """The result in the target's shape (``"none"``) and the input's dtype."""
    return restore(out, call.shape, call.dtype, reduction)


def restore(out: torch.Tensor, shape: torch.Size, dtype: torch.dtype, reduction: str):
    """``out`` reshaped to ``shape`` for ``"none"``, in ``dtype``."""
    if reduction == "none":
        out = out.reshape(shape)
    return out if out.dtype == dtype else out.to(dtype)


def classification_loss(
    per_sample: PerSampleLoss,
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    k: int | None = None,
) -> torch.Tensor:
    """Apply ``per_sample(scores (M, C), target (M,)) -> (M,)`` under ``F.cross_entropy``'s rules.

    ``per_sample`` receives scores in the working dtype (float32 or float64) and targets in
    ``[0, C)``; ignored rows reach it as zeros with target 0, and their loss is discarded.
    """
    call = prepare(input, target, k, weight, ignore_index, reduction)
    dtype = working_dtype(call.scores.dtype)
    valid = call.target != ignore_index
    safe = torch.where(valid, call.target, 0)
    # an ignored row's scores never reach the loss: no NaN of theirs in value or gradient
    scores = torch.where(valid[:, None], call.scores.to(dtype), 0.0)
    off = torch.autocast(call.scores.device.type, enabled=False) if call.autocast else nullcontext()
    with off:
        weights = row_weights(weight, safe, valid, dtype)
        losses = torch.where(valid, per_sample(scores, safe) * weights, 0.0)
        out = reduce(losses, weights, reduction)
    return finish(out, call, reduction)


def expects_distribution(target, label_smoothing: float) -> bool:
    """Whether a call is an expectation over a target distribution (:func:`expected_loss`):
    class probabilities, or label smoothing."""
    return bool(label_smoothing) or (
        isinstance(target, torch.Tensor) and target.is_floating_point()
    )


def expected_loss(
    row_losses: RowLosses, call: Rows, weight, ignore_index, reduction, label_smoothing
) -> torch.Tensor:
    r"""``F.cross_entropy``'s rules for class probabilities and label smoothing: the expected
    loss under the target distribution (:func:`target_distribution`), from
    ``row_losses(scores, beta) = sum_c beta_{ic} l_{ic}`` (``l_{ic}`` the loss of class ``c``
    for row ``i``) on rows from :func:`prepare` with ``probabilities=True``."""
    off = torch.autocast(call.scores.device.type, enabled=False) if call.autocast else nullcontext()
    with off:
        dtype = working_dtype(call.scores.dtype)
        classes = call.scores.shape[1]
        dist = target_distribution(call.target, weight, ignore_index, label_smoothing, classes,
                                   dtype)  # fmt: skip
        total = call.scores.shape[0] if dist.weights is None else None  # probabilities: M
        out = reduce(row_losses(dist.kept(call.scores), dist.beta), dist.weights, reduction, total)
    return finish(out, call, reduction)


class Distribution(NamedTuple):
    """Rows' target distribution for :func:`expected_loss`: ``beta (M, C)`` (class weights
    included), and for class indices the rows' weights ``weight[t_i]`` and kept-row mask
    (None for probabilities)."""

    beta: torch.Tensor
    weights: torch.Tensor | None
    valid: torch.Tensor | None

    def kept(self, scores: torch.Tensor) -> torch.Tensor:
        """The scores with an ignored row's replaced by 0 (never read: no NaN of theirs)."""
        return scores if self.valid is None else torch.where(self.valid[:, None], scores, 0.0)


def target_distribution(target, weight, ignore_index, label_smoothing, classes, dtype):
    r"""The coefficients ``beta`` of the expected loss ``sum_c beta_{ic} l_{ic}`` of rows
    ``target`` (probabilities ``(M, C)`` or class indices ``(M,)``), as a :class:`Distribution`.
    With ``w_c`` the class weights (1 without) and ``eps`` the smoothing:

    * probabilities ``q``: ``beta_{ic} = w_c ((1 - eps) q_{ic} + eps / C)``; ``"mean"`` divides
      the sum by the number of rows;
    * class indices ``t``: ``beta_{ic} = (eps / C) w_c + (1 - eps) w_{t_i} [c = t_i]``, and
      ``beta_i = 0`` for an ignored row (whose scores are never read); ``"mean"`` divides by
      ``sum w_{t_i}`` over the rows that count.

    Example:
        >>> dist = target_distribution(torch.tensor([2, -100]), None, -100, 0.3, 3, torch.float64)
        >>> dist.beta
        tensor([[0.1000, 0.1000, 0.8000],
                [0.0000, 0.0000, 0.0000]], dtype=torch.float64)
    """
    if target.is_floating_point():
        beta = target.to(dtype)
        if label_smoothing:
            beta = beta * (1.0 - label_smoothing) + label_smoothing / classes
        if weight is not None:
            beta = beta * weight.to(dtype)
        return Distribution(beta, None, None)
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    weights = row_weights(weight, safe, valid, dtype)
    spread = valid[:, None].to(dtype) * (label_smoothing / classes)
    if weight is None:
        beta = spread.expand(-1, classes).clone()
    else:
        beta = spread * weight.to(dtype)
    own = ((1.0 - label_smoothing) * weights)[:, None]
    return Distribution(beta.scatter_add_(1, safe[:, None], own), weights, valid)
