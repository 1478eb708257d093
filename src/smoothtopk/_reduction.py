"""The calling convention of ``F.cross_entropy``, shared by every loss of the package.

A loss is written once as a per-sample function of a 2-D score matrix ``(M, C)`` and targets
``(M,)`` that are already valid class indices; :func:`classification_loss` wraps it with the
rest of the contract:

* shapes ``(C)``, ``(N, C)`` or ``(N, C, d1, ...)`` with targets ``()``, ``(N)`` or
  ``(N, d1, ...)``, flattened to rows and restored for ``reduction="none"``;
* ``ignore_index`` (those elements give 0 and carry no weight), per-class ``weight`` applied as
  ``weight[target]``, and ``reduction`` with the semantics of ``F.cross_entropy``: ``"mean"`` is
  ``sum(weight[t_i] * l_i) / sum(weight[t_i])`` over the non-ignored elements;
* dtypes: float16/bfloat16 are computed in float32 and returned in the input dtype; under
  autocast the input is promoted to float32 first, exactly as autocast treats ``cross_entropy``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._validation import check_input_target, check_reduction, check_target_range, check_weight

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything narrower is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def num_classes_of(input: torch.Tensor) -> int:
    return input.shape[0] if input.dim() == 1 else input.shape[1]


def rows(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C, d1, ...)`` scores and ``(N, d1, ...)`` targets as ``(M, C)`` and ``(M,)``."""
    num_classes = num_classes_of(input)
    if input.dim() == 1:
        scores = input.unsqueeze(0)
    elif input.dim() == 2:
        scores = input
    else:
        scores = input.movedim(1, -1).reshape(-1, num_classes)
    return scores, target.reshape(-1).long()


def validate(input, target, weight, reduction) -> int:
    """Run the shared argument checks; return the number of classes."""
    check_input_target(input, target)
    check_reduction(reduction)
    num_classes = num_classes_of(input)
    check_weight(weight, num_classes, input.device)
    return num_classes


def classification_loss(
    per_sample: PerSampleLoss,
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    low_precision_input: bool = False,
) -> torch.Tensor:
    """Apply ``per_sample(scores (M, C), target (M,)) -> (M,)`` under ``F.cross_entropy``'s rules.

    ``per_sample`` receives scores in the working dtype (float32 or float64) — or, with
    ``low_precision_input``, float16/bfloat16 scores as given (it then returns float32 losses) —
    and targets in ``[0, C)``; ignored elements are given target 0 and their loss is discarded.
    """
    num_classes = validate(input, target, weight, reduction)
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        input = input.float()
    out_dtype = input.dtype
    dtype = working_dtype(input.dtype)
    scores, flat_target = rows(input, target)
    valid = flat_target != ignore_index
    safe_target = torch.where(valid, flat_target, 0)
    check_target_range(flat_target, num_classes, ignore_index, safe_target)

    with torch.autocast(device_type, enabled=False):
        losses = per_sample(scores if low_precision_input else scores.to(dtype), safe_target)
        losses = torch.where(valid, losses, 0.0)
        if weight is None:
            sample_weight = valid.to(dtype)
        else:
            sample_weight = weight.to(dtype)[safe_target] * valid
            losses = losses * sample_weight
        if reduction == "none":
            result = losses.reshape(target.shape)
        elif reduction == "sum":
            result = losses.sum()
        else:
            result = losses.sum() / sample_weight.sum()
    return result.to(out_dtype)
