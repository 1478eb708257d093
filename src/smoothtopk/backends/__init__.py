"""The one place that chooses the implementation of a smooth-loss call: the backend seam.

Backends (modules with the same contract):

* ``cpu`` — the fused C++ kernel (:mod:`smoothtopk.backends.cpu`), CPU tensors;
* ``triton`` — the fused Triton kernel (:mod:`smoothtopk.backends.triton`), CUDA tensors (and
  CPU tensors under ``TRITON_INTERPRET=1``, Triton's interpreter, which is how CI tests it);
* ``pytorch`` — PyTorch operations (:mod:`smoothtopk.backends.pytorch`), every device: the
  reference, and what runs when no fused kernel applies (float64 on GPUs, very large ``k``).

``SMOOTHTOPK_BACKEND=auto|cpu|triton|pytorch`` (read at every call; default ``auto``) forces
one. ``auto`` takes the first of ``cpu``, ``triton``, ``pytorch`` that can compute the call (and,
for ``triton``, whose self-check on this kind of call agreed with the PyTorch path); a forced
backend that cannot raises ``RuntimeError`` saying why, never a silent fallback.

The contract of a backend module (``docs/architecture.md``)::

    NAME: str
    CHECKS_TARGETS: bool                        # its kernel refuses targets out of range
    unavailable(scores, k) -> str | None        # None: can compute; else the reason
    self_check(scores, k, target, weight, ignore_index, tau, alpha, reduction) -> str | None
                                                # optional: auto's check of the results
    forward(scores, target, weight, ignore_index, k, tau, alpha, reduction) -> (out, saved)
    backward(grad_out, scores, target, weight, ignore_index, saved, k, tau, alpha, reduction)
    loss(scores, target, weight, ignore_index, k, tau, alpha, reduction) -> out
                                                # optional: forward + backward as one
                                                # differentiable operator (eager calls only)
    prepare(scores, k, tau, alpha, weight, ignore_index, reduction) -> prepared
                                                # optional: a kind of eager call set up once
                                                # (float alpha): prepared.forward(scores,
                                                # target, weight) -> (out, saved),
                                                # prepared.backward(grad_out, scores, target,
                                                # saved) -> grad, without the dispatcher
                                                # (never called under a dispatch mode),
                                                # and prepared.options = (ignore_index, k,
                                                # tau, alpha, reduction)

``scores (M, C)``, ``target (M,)`` int64 (``ignore_index`` or a class), ``alpha`` a float or
per-class margins, a ``(C,)`` floating tensor on the scores' device (row ``i`` uses
``alpha[target_i]``; checked by the caller), ``out`` the reduced
loss (``(M,)`` for ``"none"``; float64 for float64 scores, else float32), ``saved`` the
backend's ``O(M k)`` tensors; ``backward`` returns ``dL/dscores`` in the scores' dtype.

Example:
    >>> import torch
    >>> from smoothtopk import backends
    >>> backends.select(torch.zeros(4, 10, dtype=torch.float64), k=3).NAME in backends.NAMES
    True
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import cpu, every_class, pytorch, triton

ENV = "SMOOTHTOPK_BACKEND"
#: the retired switch of the CPU kernel: refused, so that a setting of it is never silently lost
RETIRED = "SMOOTHTOPK_CPU_KERNEL"
# The backends in the order in which ``auto`` tries them; adding one is adding it here.
_MODULES = {module.NAME: module for module in (cpu, triton, pytorch)}
NAMES = tuple(_MODULES)


def requested() -> str:
    """The value of ``SMOOTHTOPK_BACKEND`` (``auto`` when unset), checked."""
    if os.environ.get(RETIRED) is not None:
        raise ValueError(f"{RETIRED} is retired: use {ENV}=pytorch (or cpu, auto) instead")
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice != "auto" and choice not in NAMES:
        raise ValueError(f"{ENV} must be one of auto, {', '.join(NAMES)}; got {choice!r}")
    return choice


# ``os.environ``'s own dict (keys and values as the OS holds them), read by :func:`setting`: a
# lookup there costs 0.03 us against about 0.8 us for ``os.environ.get`` of an unset variable
# (a KeyError raised and caught inside), a tenth of a small loss call (issue #20).
_ENVIRON = os.environ
_RAW = getattr(_ENVIRON, "_data", None)
_RAW_KEYS = (
    (_ENVIRON.encodekey(ENV), _ENVIRON.encodekey(RETIRED))
    if isinstance(_RAW, dict) and callable(getattr(_ENVIRON, "encodekey", None))
    else None
)


def setting() -> tuple:
    """The raw values of ``SMOOTHTOPK_BACKEND`` and the retired switch, unchecked: equal
    settings give equal :func:`requested` answers (and errors), so a call's plan may be keyed on
    it. Read from ``os.environ``'s own dict when it has one (CPython), else through it.

    Example:
        >>> backend, retired = setting()  # e.g. (None, None) when neither is set
        >>> all(value is None or isinstance(value, (str, bytes)) for value in (backend, retired))
        True
    """
    if _RAW_KEYS is not None and os.environ is _ENVIRON:
        return _RAW.get(_RAW_KEYS[0]), _RAW.get(_RAW_KEYS[1])
    return os.environ.get(ENV), os.environ.get(RETIRED)


def module(name: str) -> ModuleType:
    """The backend module of that name."""
    return _MODULES[name]


def select(scores: torch.Tensor, k: int, call: tuple | None = None) -> ModuleType:
    """The backend that computes a call on ``scores (M, C)`` with this ``k``; ``call`` is the
    rest of it, ``(target, weight, ignore_index, tau, alpha, reduction)``, for the self-check
    of a backend that has one (``auto`` only: a forced backend is taken as it is)."""
    choice = requested()
    if choice != "auto":
        backend = module(choice)
        reason = backend.unavailable(scores, k)
        if reason is not None:
            raise RuntimeError(f"{ENV}={choice} cannot compute this call: {reason}")
        return backend
    reasons = []
    for name in NAMES:
        backend = module(name)
        reason = backend.unavailable(scores, k)
        if reason is None and call is not None and hasattr(backend, "self_check"):
            reason = backend.self_check(scores, k, *call)
        if reason is None:
            return backend
        reasons.append(f"{name}: {reason}")
    raise RuntimeError("no backend can compute this call: " + "; ".join(reasons))


def every_class_loss(scores: torch.Tensor, k: int, call: tuple | None = None):
    """The implementation of ``sum_c beta_{ic} L(s_i, c)`` (probability targets, label
    smoothing) for ``scores (M, C)``: ``expected(scores, beta, k, tau, alpha) -> (M,)`` of the
    first of the fused CPU kernel (:func:`smoothtopk.backends.cpu.expected`) and the Triton
    kernel (:func:`smoothtopk.backends.triton.expected`) that computes the call, else PyTorch
    operations (:func:`smoothtopk.backends.every_class.expected`, every device). ``call`` is
    ``(beta, tau, alpha)``, for ``auto``'s self-check of the Triton kernel (as :func:`select`);
    a forced backend that cannot compute the call raises."""
    choice = requested()
    for name in ("cpu", "triton"):
        if choice not in ("auto", name):
            continue
        backend = module(name)
        reason = backend.unavailable(scores, k)
        check = getattr(backend, "self_check_expected", None)
        if reason is None and choice == "auto" and call is not None and check is not None:
            reason = check(scores, k, *call)
        if reason is None:
            return backend.expected
        if choice == name:
            raise RuntimeError(f"{ENV}={choice} cannot compute this call: {reason}")
    return every_class.expected
