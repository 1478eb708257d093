"""The fused CPU kernel (``csrc/smooth_topk_cpu.cpp``): built on first use, used when it applies.

The kernel computes the loss and its gradient in one pass over the scores per stage, in float64
inside, with the same algorithm as the PyTorch implementation of :mod:`smoothtopk.smooth_topk`
(docs/algorithm.md). It is compiled once per machine with ``torch.utils.cpp_extension.load``
(about 15 s; cached in ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) and
registered as the operators ``torch.ops.smoothtopk.forward`` / ``backward``.

It is used for CPU tensors when ``k log(2 C) <= 700`` (so no sum of products of numbers
``<= 1`` can overflow a double: up to k = 48 at a million classes), in eager mode and in
``torch.compile`` graphs (as two operators with registered shapes) once an eager call or
:func:`load` has built it in the process. Everything else — other devices, double backward,
larger k — runs the PyTorch implementation, which gives the same values.
``SMOOTHTOPK_CPU_KERNEL=0`` turns the kernel off; if no C++ compiler is found, a warning says
so once and the PyTorch implementation is used.

Example:
    >>> import torch
    >>> from smoothtopk import cpu_kernel
    >>> cpu_kernel.applies(torch.zeros(4, 100), k=5) in (True, False)
    True
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "smooth_topk_cpu.cpp"
ENV_SWITCH = "SMOOTHTOPK_CPU_KERNEL"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-trapping-math", "-fopenmp"]
PORTABLE_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-trapping-math"]
MAX_LOG_TERM = 700.0  # k log(2 C) bound: every intermediate sum stays below e^700 < max double

_lock = threading.Lock()
_state: dict[str, object] = {}
_fakes_registered: list[bool] = []


def _machine_tag() -> str:
    """Builds use ``-march=native``: name them after the CPU so that a shared cache is safe."""
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags += next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def _ninja_directory() -> str | None:
    """torch runs ``ninja`` from PATH; the ``ninja`` package (a dependency) is not on PATH when
    its environment is used without being activated."""
    try:
        import ninja
    except ImportError:
        return None
    return getattr(ninja, "BIN_DIR", None)


def _compile(name: str, flags: list[str], ldflags: list[str]) -> None:
    from torch.utils.cpp_extension import load

    path = os.environ.get("PATH", "")
    directory = _ninja_directory()
    if directory:
        os.environ["PATH"] = directory + os.pathsep + path
    try:
        load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=ldflags,
            is_python_module=False,
            verbose=False,
        )
    finally:
        os.environ["PATH"] = path


def _build():
    """Build with FLAGS; if the compiler refuses them (no OpenMP, no -march=native), again with
    PORTABLE_FLAGS: a serial kernel for the generic CPU of the platform."""
    try:
        # -fopenmp: at::parallel_for is serial without it; the extension then shares torch's
        # libgomp, so torch.set_num_threads applies.
        _compile(f"smoothtopk_cpu_{_machine_tag()}", FLAGS, ["-fopenmp"])
    except Exception as first:
        try:
            _compile("smoothtopk_cpu_portable", PORTABLE_FLAGS, [])
        except Exception:
            raise first from None
    _register_fakes()
    return torch.ops.smoothtopk


def _register_fakes() -> None:
    """Shapes of the operators' outputs, so that torch.compile can trace calls to them."""

    def forward(scores, target, k, tau, alpha):
        rows = scores.shape[0]
        f64 = dict(dtype=torch.float64, device=scores.device)
        return (
            scores.new_empty(rows, **f64),
            scores.new_empty(rows, 2 + 2 * k, **f64),
            scores.new_empty(rows, k, dtype=torch.int64),
        )

    def backward(grad_loss, scores, target, stats, anchor_index, k, tau):
        return torch.empty_like(scores, memory_format=torch.contiguous_format)

    if not _fakes_registered:  # once per process, even if the library is loaded again
        torch.library.register_fake("smoothtopk::forward")(forward)
        torch.library.register_fake("smoothtopk::backward")(backward)
        _fakes_registered.append(True)


def enabled() -> bool:
    """False when ``SMOOTHTOPK_CPU_KERNEL=0`` (read at each call)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def load():
    """The operator namespace ``torch.ops.smoothtopk`` (building it once), or None if the build
    failed or the kernel is turned off."""
    if not enabled():
        return None
    with _lock:
        if "ops" not in _state:
            try:
                _state["ops"] = _build()
            except Exception as error:  # no compiler, no ninja, read-only cache, ...
                _state["ops"] = None
                warnings.warn(
                    f"smoothtopk: the fused CPU kernel could not be built ({error}); "
                    "using the PyTorch implementation (same results, slower).",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _state["ops"]


def fits(classes: int, k: int) -> bool:
    """Whether the float64 sums of the kernel are guaranteed not to overflow."""
    return k * math.log(2.0 * classes) <= MAX_LOG_TERM


def applies(scores: torch.Tensor, k: int) -> bool:
    """Whether the fused kernel computes this call (builds it on first use)."""
    return (
        scores.device.type == "cpu"
        and scores.dtype in DTYPES
        and scores.dim() == 2
        and fits(scores.shape[1], k)
        and _available()
    )


def _available() -> bool:
    """Inside a torch.compile trace nothing is built (or locked): the kernel is used there only
    if an eager call has built it already."""
    if torch.compiler.is_compiling():
        return enabled() and _state.get("ops") is not None
    return load() is not None


# The backend contract of smoothtopk._backend, over the per-row operators (interim adapter:
# weight, ignore_index and the reduction are applied around the kernel).
NAME = "cpu"


def unavailable(scores: torch.Tensor, k: int) -> str | None:
    """None when the fused kernel computes this call, else why not."""
    if applies(scores, k):
        return None
    if scores.device.type != "cpu":
        return f"the fused CPU kernel takes CPU tensors, got {scores.device.type}"
    if not enabled():
        return f"the fused CPU kernel is turned off ({ENV_SWITCH}=0)"
    if not fits(scores.shape[1], k):
        return f"k * log(2 C) > {MAX_LOG_TERM:g} (k={k}, C={scores.shape[1]})"
    return "the fused CPU kernel could not be built (see the warning above)"


def forward(scores, target, weight, ignore_index, k, tau, alpha, reduction):
    from . import _reduction as reference

    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    loss, stats, anchor_index = torch.ops.smoothtopk.forward(scores, safe, k, tau, alpha)
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    weights = reference.row_weights(weight, safe, valid, dtype)
    losses = torch.where(valid, loss.to(dtype) * weights, 0.0)
    return reference.reduce(losses, weights, reduction), (weights, stats, anchor_index)


def backward(grad_out, scores, target, weight, ignore_index, saved, k, tau, alpha, reduction):
    from . import _reduction as reference

    weights, stats, anchor_index = saved
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    row_grad = reference.row_gradients(grad_out.to(weights.dtype), weights, reduction)
    grad = torch.ops.smoothtopk.backward(row_grad, scores, safe, stats, anchor_index, k, tau)
    return torch.where(valid[:, None], grad, 0.0)
