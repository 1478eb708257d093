"""Argument checks shared by every loss: clear ``ValueError``/``TypeError`` messages.

Checks that only look at Python values, shapes and dtypes cost nothing on any device. The one
check that looks at tensor *values* (targets in range) runs eagerly on CPU tensors only; on an
accelerator, and under ``torch.compile``, it is an asynchronous device assertion so that the hot
path never waits for the device.
"""

from __future__ import annotations

import math
import numbers

import torch

_REDUCTIONS = ("none", "mean", "sum")


def check_k(k, num_classes: int, name: str = "k") -> int:
    """``k`` must be an integer with ``1 <= k < num_classes``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k < num_classes:
        raise ValueError(
            f"{name} must satisfy 1 <= {name} < number of classes ({num_classes}), got {k}"
        )
    return k


def check_positive_int(value, name: str) -> int:
    """An integer ``>= 1`` (sample counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return value


def check_positive(value, name: str) -> float:
    """A finite real number ``> 0`` (temperatures)."""
    value = _check_real(value, name)
    if not value > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_non_negative(value, name: str) -> float:
    """A finite real number ``>= 0`` (margins)."""
    value = _check_real(value, name)
    if not value >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_real(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not abs(value) < math.inf:  # not NaN, not infinite (math.isfinite breaks dynamic shapes)
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_reduction(reduction) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def check_input_target(input, target) -> None:
    """``input`` (C), (N, C) or (N, C, d1, ...) floating; ``target`` (), (N) or (N, d1, ...)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices (torch.int64), got dtype {target.dtype}"
        )
    if input.dim() == 0:
        raise ValueError("input must have at least 1 dimension (the classes), got a scalar")
    if input.dim() == 1:
        expected = ()
    else:
        expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target must have shape {expected} for input of shape {tuple(input.shape)} "
            f"(input is (N, C, d1, ...), target (N, d1, ...)), got {tuple(target.shape)}"
        )


def check_weight(weight, num_classes: int, device: torch.device) -> None:
    if weight is None:
        return
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"weight must have shape ({num_classes},) (one entry per class), "
            f"got {tuple(weight.shape)}"
        )
    if weight.device != device:
        raise ValueError(f"weight is on {weight.device} but input is on {device}")


def check_target_range(
    target: torch.Tensor, num_classes: int, ignore_index: int, safe: torch.Tensor | None = None
) -> None:
    """Every target is in ``[0, num_classes)`` or equal to ``ignore_index``.

    ``safe``: the targets with ignored ones set to 0, if the caller has them already.
    """
    if torch.compiler.is_compiling() or target.device.type != "cpu":
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        torch._assert_async(
            ~bad.any(), f"target must be in [0, {num_classes}) or equal to ignore_index"
        )
        return
    if target.numel() == 0:
        return
    # One pass in the common case: the range of the targets with ignored ones set to 0.
    if safe is None:
        safe = torch.where(target != ignore_index, target, 0)
    lowest, highest = torch.aminmax(safe)
    if int(lowest) < 0 or int(highest) >= num_classes:
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        value = int(target[bad][0])
        raise ValueError(
            f"target must be in [0, {num_classes}) or equal to ignore_index={ignore_index}, "
            f"found {value}"
        )
