r"""The fused CPU kernel (``csrc/smooth_topk_cpu.cpp``): the ``"cpu"`` backend of the smooth loss.

One operator per direction computes the loss of every row, its weight, ``ignore_index`` and the
reduction, and then the gradient, in float64 inside, with the algorithm of
:mod:`smoothtopk.pytorch_backend` (docs/algorithm.md). Per row, with
:math:`z' = \alpha + (a - s_y)/k + \tau(\log A - \log B)` (no division by :math:`\tau`, so no
overflow at extreme :math:`\tau` or :math:`\alpha`):

.. math::

    l = \mathrm{relu}(z') + \tau \log(1 + e^{-|z'|/\tau}), \qquad
    \text{out} = \begin{cases} (w_{t_i} l_i)_i & \text{none} \\
    \sum_i w_{t_i} l_i & \text{sum} \\
    \sum_i w_{t_i} l_i / \sum_i w_{t_i} & \text{mean} \end{cases}

over the rows whose target is not ``ignore_index`` (ignored rows give exactly 0, and their
class's weight is never read). :math:`\alpha` is a float, or per-class margins: a ``(C,)``
tensor ``alpha_per_class`` of which row ``i`` reads ``alpha_per_class[t_i]``. A row with fewer
than ``k`` finite other scores has loss and gradient 0 (the limit); NaN or +inf in a row gives
NaN, as ``F.cross_entropy``.

The operator schemas ``smoothtopk::forward`` / ``smoothtopk::backward`` and their fake kernels are
registered when this module is imported; the C++ file only implements them for CPU tensors.
It is compiled once per machine (about 15 s, cached in ``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``; the first build says so on stderr) by the first call, or ahead
of time by ``python -c "import smoothtopk; smoothtopk.cpu_kernel.load()"``.
``SMOOTHTOPK_BACKEND=pytorch`` (:mod:`smoothtopk._backend`, the one switch) keeps a process
from using (or building) it; if no C++ compiler is found, a warning says so once.

Shape:
    scores ``(M, C)``, target ``(M,)``, weight and alpha_per_class ``(C,)`` or None; out
    ``(M,)`` for ``"none"``, else ``()``; saved: ``(M, 2 + 2k)`` float64 factors and ``(M, k)``
    anchor classes.

Example:
    >>> import torch
    >>> from smoothtopk import cpu_kernel
    >>> scores, target = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([-100, 1])
    >>> if cpu_kernel.unavailable(scores, 1) is None:
    ...     out, saved = cpu_kernel.forward(scores, target, None, -100, 1, 1.0, 0.0, "mean")
    ...     grad = cpu_kernel.backward(torch.tensor(1.0), scores, target, None, -100, saved,
    ...                                1, 1.0, 0.0, "mean")
    ...     print(round(out.item(), 4), grad[0].tolist())
    1.4076 [0.0, 0.0, 0.0]
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import sys
import threading
import warnings
from pathlib import Path

import torch

NAME = "cpu"
SOURCE = Path(__file__).with_name("csrc") / "smooth_topk_cpu.cpp"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-trapping-math", "-fopenmp"]
PORTABLE_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-trapping-math"]
MAX_LOG_TERM = 700.0  # k log(2 C) bound: every intermediate sum stays below e^700 < max double
BUILT = "built"  # marker file in a build directory: its library is complete and loadable
AHEAD_OF_TIME = 'python -c "import smoothtopk; smoothtopk.cpu_kernel.load()"'
BUILD = "build it first with smoothtopk.cpu_kernel.load() (or an eager call)"

_lock = threading.Lock()
_state: dict[str, object] = {}


def _forward_fake(
    scores, target, weight, ignore_index, k, tau, alpha, reduction, alpha_per_class=None
):
    rows = scores.shape[0]
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    out = scores.new_empty((rows,) if reduction == "none" else (), dtype=dtype)
    stats = scores.new_empty(rows, 2 + 2 * k, dtype=torch.float64)
    return out, stats, scores.new_empty(rows, k, dtype=torch.int64)


def _backward_fake(grad_out, scores, target, stats, anchor_index, ignore_index, k, tau, reduction):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


def _define_operators() -> None:
    """The schemas and fake kernels, once per process (this file may be imported twice, e.g.
    by path); the compiled library adds the CPU kernels."""
    if hasattr(torch.ops.smoothtopk, "forward"):
        return
    torch.library.define(
        "smoothtopk::forward",
        "(Tensor scores, Tensor target, Tensor? weight, int ignore_index, int k, float tau, "
        "float alpha, str reduction, Tensor? alpha_per_class=None) -> (Tensor, Tensor, Tensor)",
    )
    torch.library.define(
        "smoothtopk::backward",
        "(Tensor grad_out, Tensor scores, Tensor target, Tensor stats, Tensor anchor_index, "
        "int ignore_index, int k, float tau, str reduction) -> Tensor",
    )
    torch.library.register_fake("smoothtopk::forward")(_forward_fake)
    torch.library.register_fake("smoothtopk::backward")(_backward_fake)


_define_operators()
_forward_op = torch.ops.smoothtopk.forward.default
_backward_op = torch.ops.smoothtopk.backward.default


def forward(scores, target, weight, ignore_index, k, tau, alpha, reduction):
    """Loss (reduced; float64 for float64 scores, else float32) and the saved factors.
    ``alpha``: a float, or per-class margins ``(C,)`` (the kernel reads ``alpha[t_i]``)."""
    if isinstance(alpha, torch.Tensor):
        out, stats, anchor_index = _forward_op(
            scores, target, weight, ignore_index, k, tau, 0.0, reduction, alpha
        )
    else:
        out, stats, anchor_index = _forward_op(
            scores, target, weight, ignore_index, k, tau, alpha, reduction
        )
    return out, (stats, anchor_index)


def backward(grad_out, scores, target, weight, ignore_index, saved, k, tau, alpha, reduction):
    """dL/dscores ``(M, C)`` in the scores' dtype; ignored rows exactly 0. The weight and the
    mean's ``1 / sum w`` were folded into the saved factors by :func:`forward`."""
    stats, anchor_index = saved
    return _backward_op(
        grad_out, scores, target, stats, anchor_index, ignore_index, k, tau, reduction
    )


def fits(classes: int, k: int) -> bool:
    """Whether the float64 sums of the kernel are guaranteed not to overflow."""
    return k * math.log(2.0 * classes) <= MAX_LOG_TERM


def unavailable(scores: torch.Tensor, k: int) -> str | None:
    """None if the kernel computes this call (building it on first use, outside a
    torch.compile trace); otherwise why not, in one line."""
    if not scores.is_cpu:
        return f"scores are on {scores.device}, the fused kernel runs on the CPU"
    if scores.dtype not in DTYPES:
        return f"scores are {scores.dtype}, the fused kernel reads float32/64, float16, bfloat16"
    if scores.dim() != 2:
        return f"scores have {scores.dim()} dimensions, the fused kernel takes (rows, classes)"
    classes = scores.shape[1]
    if not (k <= 48 and classes <= 1_000_000) and not fits(classes, k):  # 48 log(2e6) < 700
        return f"k log(2 C) > {MAX_LOG_TERM:g} at k={k}, C={classes}: float64 sums could overflow"
    if _state.get("ops") is not None:
        return None
    if torch.compiler.is_compiling():
        return (
            f"the fused CPU kernel is not built in this process; a trace never builds it: {BUILD}"
        )
    if load() is None:
        return f"the fused CPU kernel could not be built ({_state.get('error')})"
    return None


def load():
    """The operator namespace ``torch.ops.smoothtopk`` with its CPU kernels (building them once
    per machine, loading them once per process), or None if the build failed."""
    with _lock:
        if "ops" not in _state:
            try:
                _load_or_build()
                _state["ops"] = torch.ops.smoothtopk
            except Exception as error:  # no compiler, no ninja, read-only cache, ...
                _state["ops"], _state["error"] = None, error
                warnings.warn(
                    f"smoothtopk: the fused CPU kernel could not be built ({error}); "
                    "using the PyTorch implementation (same results, slower).",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _state["ops"]


def _build_root() -> Path:
    """``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions`` (as torch)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "torch_extensions"


def _build_name(portable: bool) -> str:
    """A name per source, flags, torch, Python and (native builds: ``-march=native``) CPU, so
    that an existing library is the one this process would build."""
    flags = PORTABLE_FLAGS if portable else FLAGS
    parts = [SOURCE.read_bytes(), " ".join(flags).encode(), torch.__version__.encode()]
    parts += [sys.version.encode(), platform.machine().encode()]
    if not portable:
        parts.append(_cpu_flags().encode())
    digest = hashlib.sha1(b"\0".join(parts)).hexdigest()[:12]
    return f"smoothtopk_cpu_{'portable_' if portable else ''}{digest}"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _load_or_build() -> None:
    """Load a library built before (no compiler, no torch.utils.cpp_extension); otherwise build
    with FLAGS, or if the compiler refuses them (no OpenMP, no -march=native) PORTABLE_FLAGS."""
    root = _build_root()
    names = [_build_name(portable=False), _build_name(portable=True)]
    for name in names:
        if (root / name / BUILT).is_file():
            torch.ops.load_library(str(root / name / f"{name}.so"))
            return
    print(
        f"smoothtopk: compiling the fused CPU kernel ({SOURCE.name}, about 15 s); this happens "
        f"once per machine (cached in {root}, set TORCH_EXTENSIONS_DIR to move it); "
        f"to build ahead of time: {AHEAD_OF_TIME}",
        file=sys.stderr,
        flush=True,
    )
    try:
        # -fopenmp: at::parallel_for is serial without it; the extension then shares torch's
        # libgomp, so torch.set_num_threads applies.
        _compile(names[0], root, FLAGS, ["-fopenmp"])
    except Exception as first:
        try:
            _compile(names[1], root, PORTABLE_FLAGS, [])
        except Exception:
            raise first from None


def _compile(name: str, root: Path, flags: list[str], ldflags: list[str]) -> None:
    """``torch.utils.cpp_extension.load`` into ``root/name``, which also loads the library.
    Imported here only: importing it prints a notice on machines without CUDA."""
    from torch.utils.cpp_extension import load

    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PATH", "")
    ninja = _ninja_directory()
    if ninja:
        os.environ["PATH"] = ninja + os.pathsep + path
    try:
        load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=ldflags,
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
    finally:
        os.environ["PATH"] = path
    # Written once the library is complete (a concurrent build holds torch's lock until then).
    (directory / BUILT).write_text(name + "\n")


def _ninja_directory() -> str | None:
    """torch runs ``ninja`` from PATH; the ``ninja`` package (a dependency) is not on PATH when
    its environment is used without being activated."""
    try:
        import ninja
    except ImportError:
        return None
    return getattr(ninja, "BIN_DIR", None)
