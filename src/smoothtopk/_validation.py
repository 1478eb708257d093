"""Argument checks shared by every loss: clear ``ValueError``/``TypeError`` messages.

Checks that only look at Python values, shapes and dtypes cost nothing on any device. The
checks that look at tensor *values* (targets in range; per-class margins finite and ``>= 0``)
run eagerly on CPU tensors only; on an accelerator, and under ``torch.compile``, they are
asynchronous device assertions so that the hot path never waits for the device.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import sys
from pathlib import Path

import torch

_REDUCTIONS = ("none", "mean", "sum")


def check_k(k, num_classes: int | None, name: str = "k") -> int:
    """``k`` must be an integer with ``1 <= k < num_classes`` (``k >= 1`` when the number of
    classes is not known yet, as in a Module's constructor)."""
    if type(k) is not int and (isinstance(k, bool) or not isinstance(k, numbers.Integral)):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    k = int(k)
    if num_classes is None:
        if k < 1:
            raise ValueError(f"{name} must be an int >= 1, got {k}")
        return k
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


def check_margins(alpha, input, target):
    """``alpha``: a finite number ``>= 0`` (returned as a float: the scalar path reads no tensor),
    or per-class margins, a floating ``(C,)`` tensor on the input's device, finite, ``>= 0`` and
    not requiring grad (margins are constants), returned as is. A one-element tensor is a
    scalar. The values are read eagerly on CPU only (:func:`checks_eagerly`)."""
    if type(alpha) is float and 0.0 <= alpha < math.inf:  # the common case: nothing else
        return alpha
    if isinstance(alpha, (list, tuple)):
        raise TypeError(
            f"alpha must be a number or a tensor of per-class margins, got {type(alpha).__name__}"
        )
    if not isinstance(alpha, torch.Tensor) or alpha.numel() == 1:
        return check_non_negative(alpha, "alpha")
    check_input_target(input, target, probabilities=True)  # the loss checks the target's kind
    classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    check_margin_tensor(alpha, classes)
    if alpha.device != input.device:
        raise ValueError(f"alpha is on {alpha.device} but input is on {input.device}")
    check_margin_values(alpha)
    return alpha


def check_margin_tensor(alpha: torch.Tensor, classes: int | None) -> None:
    """Per-class margins: floating, ``(classes,)`` (1-D when ``classes`` is not known yet, as
    in a Module's constructor), no gradient."""
    if not alpha.is_floating_point():
        raise TypeError(f"alpha must be a floating-point tensor, got dtype {alpha.dtype}")
    if alpha.dim() != 1 or (classes is not None and alpha.shape[0] != classes):
        expected = "(C,)" if classes is None else f"({classes},)"
        raise ValueError(
            f"alpha must be a number or a {expected} tensor of per-class margins, "
            f"got shape {tuple(alpha.shape)}"
        )
    if alpha.requires_grad:
        raise ValueError("alpha must not require grad (margins are constants): pass alpha.detach()")


def check_margin_values(alpha: torch.Tensor) -> None:
    """Every margin is finite and ``>= 0``: a ValueError on CPU (outside torch.compile), an
    asynchronous device assertion elsewhere."""
    if not checks_eagerly(alpha):
        good = (alpha >= 0) & (alpha < math.inf)
        torch._assert_async(good.all(), "alpha must hold finite per-class margins >= 0")
        return
    lowest, highest = torch.aminmax(alpha)  # NaN propagates into both
    if float(lowest) >= 0 and float(highest) < math.inf:
        return
    bad = ~((alpha >= 0) & (alpha < math.inf))
    index = int(bad.nonzero()[0, 0])
    raise ValueError(
        f"alpha must hold finite per-class margins >= 0, got {float(alpha[index])} for class "
        f"{index}"
    )


def _check_real(value, name: str) -> float:
    if type(value) is float and abs(value) < math.inf:  # the common case, without ABC checks
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.requires_grad:  # one rule for every hyper-parameter tensor: constants
            raise ValueError(f"{name} must not require grad (a constant): pass {name}.detach()")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the double range, e.g. 10**400
        raise ValueError(
            f"{name} must be finite, got an int of {value.bit_length()} bits"
        ) from None
    if not abs(value) < math.inf:  # not NaN, not infinite (math.isfinite breaks dynamic shapes)
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_ignore_index(ignore_index) -> int:
    """An int (not a bool, float or tensor) in the range of int64, as target values are."""
    if type(ignore_index) is int and -(2**63) <= ignore_index < 2**63:
        return ignore_index
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
    return int(ignore_index)


def check_temperature_scale(k: int, tau: float) -> None:
    """``1 / (k tau)`` scales score differences; it must be a finite double."""
    if not 1.0 / (k * tau) < math.inf:
        raise ValueError(f"tau must be larger: 1 / (k * tau) overflows for k={k}, tau={tau}")


def keyword_only(function):
    """Only ``input`` and ``target`` positionally: ``loss(x, y, w)`` must not pass a class
    weight as ``k`` (as ``F.cross_entropy(x, y, w)`` users would write).

    A function that takes ``*positional`` after them refuses extra positionals itself
    (``if positional: raise positional_error(...)``; no wrapper frame on a hot path, issue #20):
    it is returned as is, with the ``*positional`` parameter left out of its shown signature.
    Any other is wrapped.
    """
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    if len(parameters) > 2 and parameters[2].kind is inspect.Parameter.VAR_POSITIONAL:
        del parameters[2]
        function.__signature__ = signature.replace(parameters=parameters)
        return function

    @functools.wraps(function)
    def wrapper(input, target, *args, **kwargs):
        if args:
            raise positional_error(function.__name__, args)
        return function(input, target, **kwargs)

    return wrapper


def positional_error(name: str, extra: tuple) -> TypeError:
    """The error of :func:`keyword_only`'s functions given ``extra`` positional arguments.

    Example:
        >>> str(positional_error("loss", (1.0,))).split("; ")[-1]
        'got 1 more positional'
    """
    return TypeError(
        f"{name}() takes input and target positionally and every other argument by keyword "
        f"(k=..., weight=...); got {len(extra)} more positional"
    )


def check_reduction(reduction) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


VMAP_REFUSED = (
    "smoothtopk's losses do not support torch.func.vmap: they are batched already "
    "(scores (N, C, d1, ...)); flatten the vmapped dimension into N, with reduction='none' "
    "for per-sample losses"
)


def check_input_target(input, target, probabilities: bool = False) -> None:
    """``input`` (C), (N, C) or (N, C, d1, ...) floating; ``target`` (), (N) or (N, d1, ...)
    class indices or, where the loss takes them (``probabilities``), class probabilities of
    the input's shape and a floating dtype, as ``F.cross_entropy``."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if _is_batched(input) or _is_batched(target):
        raise RuntimeError(VMAP_REFUSED)
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if input.dim() == 0:
        raise ValueError("input must have at least 1 dimension (the classes), got a scalar")
    if probabilities and target.is_floating_point():
        _check_probability_target(input, target)
        return
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        kinds = " or class probabilities (floating, the input's shape)" if probabilities else ""
        raise TypeError(
            f"target must hold integer class indices (torch.int64){kinds}, got dtype {target.dtype}"
        )
    if input.dim() == 1:
        expected = ()
    else:
        expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target must have shape {expected} for input of shape {tuple(input.shape)} "
            f"(input is (N, C, d1, ...), target (N, d1, ...)), got {tuple(target.shape)}"
        )
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")


def _check_probability_target(input: torch.Tensor, target: torch.Tensor) -> None:
    """Class probabilities: the input's shape and device. The values are not read: any real
    ``q`` gives ``sum_c q_c l_c`` (and its gradient in ``q``), as in ``F.cross_entropy``."""
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"target of class probabilities (a floating dtype) must have the input's shape "
            f"{tuple(input.shape)}, got {tuple(target.shape)}; class indices are an integer "
            f"dtype"
        )
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")


def check_label_smoothing(value) -> float:
    """A float in ``[0, 1]``, as ``F.cross_entropy``'s ``label_smoothing``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {value}")
    return float(value)


def _is_batched(tensor: torch.Tensor) -> bool:
    """A tensor under ``torch.func.vmap`` (whose values cannot be read for the checks)."""
    return torch._C._functorch.is_batchedtensor(tensor)


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
    if weight.requires_grad:  # as F.cross_entropy: class weights are constants
        raise ValueError("weight must not require grad (class weights are constants): pass "
                         "weight.detach()")  # fmt: skip


def checks_eagerly(tensor: torch.Tensor) -> bool:
    """Tensor values (target range, per-class margins) are read on the host only for CPU
    tensors outside torch.compile: the package's checks of tensor data (documented; no device
    ever waits)."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def check_target_range(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Every target is in ``[0, num_classes)`` or equal to ``ignore_index``: a ValueError on
    CPU, an asynchronous device assertion elsewhere and under torch.compile."""
    if not checks_eagerly(target):
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        torch._assert_async(
            ~bad.any(), f"target must be in [0, {num_classes}) or equal to ignore_index"
        )
        return
    if target.numel() == 0:
        return
    lowest, highest = torch.aminmax(target)  # one pass in the common case
    if int(lowest) < 0 or int(highest) >= num_classes:  # out of range, or ignored elements
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        if not bad.any():
            return
        value = int(target[bad][0])
        raise ValueError(
            f"target must be in [0, {num_classes}) or equal to ignore_index={ignore_index}, "
            f"found {value}"
        )


#: frames in these directories (the package, torch) are not the user's line
_NOT_USER = (str(Path(__file__).resolve().parent), str(Path(torch.__file__).resolve().parent))


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the caller of this function that points at
    the first frame outside the package and torch: the user's line, however deep the call."""
    frame, level = sys._getframe(2), 2
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_NOT_USER):
        frame, level = frame.f_back, level + 1
    return level


def check_linear(input, linear_weight, linear_bias, target, same_dtype: bool = True) -> None:
    """The fused linear loss's operands: ``input`` ``(N, d)`` or ``(d)``, ``linear_weight``
    ``(C, d)``, ``linear_bias`` ``(C,)`` or None, floating, on one device, of one dtype (unless
    autocast casts them: ``same_dtype=False``); ``target`` ``(N)`` or ``()`` (class indices) or
    ``(N, C)`` or ``(C)`` (class probabilities, a floating dtype)."""
    operands = {"input": input, "linear_weight": linear_weight, "linear_bias": linear_bias}
    for name, value in operands.items():
        if value is None and name == "linear_bias":
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if value.device != input.device:
            raise ValueError(f"{name} is on {value.device} but input is on {input.device}")
        if same_dtype and value.dtype != input.dtype:
            raise TypeError(f"{name} is {value.dtype} but input is {input.dtype} (outside "
                            "autocast, input and the layer must have one dtype)")  # fmt: skip
    if input.dim() not in (1, 2):
        raise ValueError(f"input must be (N, in_features) or (in_features), got shape "
                         f"{tuple(input.shape)}")  # fmt: skip
    if linear_weight.dim() != 2 or linear_weight.shape[1] != input.shape[-1]:
        raise ValueError(
            f"linear_weight must have shape (num_classes, {input.shape[-1]}) for input of shape "
            f"{tuple(input.shape)} (in_features = input.shape[-1]), got "
            f"{tuple(linear_weight.shape)}"
        )
    classes = linear_weight.shape[0]
    if linear_bias is not None and tuple(linear_bias.shape) != (classes,):
        raise ValueError(f"linear_bias must have shape ({classes},) (one entry per class of "
                         f"linear_weight), got {tuple(linear_bias.shape)}")  # fmt: skip
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    expected = tuple(input.shape[:-1])
    kind = "class indices"
    if target.is_floating_point():  # class probabilities: the logits' shape
        expected, kind = (*expected, classes), "class probabilities (a floating dtype)"
    if tuple(target.shape) != expected:
        raise ValueError(f"target of {kind} must have shape {expected} for input of shape "
                         f"{tuple(input.shape)} and {classes} classes, got "
                         f"{tuple(target.shape)}")  # fmt: skip
