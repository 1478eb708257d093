"""The contenders: one table, name -> (builder of a loss ``fn(scores, target) -> scalar``,
description, the suites that run it by default).

The package's own losses are built from its registry, :data:`smoothtopk.registry.LOSSES`, with
their registered default options (:func:`_package`); the external baselines (PyTorch's
cross-entropy, compiled or not, Liger-Kernel, pytopk, difftopk) have their own builders here.

A builder takes ``(n, k, device, dtype)`` and returns the loss function for ``n`` classes and
top-``k``; everything a contender needs to construct (modules, sorting networks, a compiled
graph) is built there or on its first call, and the harness makes that first call (and, for
memory, two more) before anything is timed: ``torch.compile`` and Triton's JIT compile there.
A builder or a call may raise: :class:`Skipped` (the contender does not apply here: needs
CUDA, package not installed) is reported as ``skipped: <reason>``, anything else (``k`` out of
range, out of memory) as ``error: <message>``; either way the table shows it instead of a
number.

A contender may carry ``fn.backend_of(x) -> str``, the implementation that computes it on the
input ``x`` (ours: the backend chosen by ``SMOOTHTOPK_BACKEND``), which the report shows, and
``fn.untimed``, ``{operation: reason}`` for operations it cannot be timed on (reported as
skipped).

Third-party contenders are called as their packages publish them (PyPI ``pytopk``,
``difftopk`` and ``liger-kernel``, installed by the ``bench`` extra), with the hyper-parameters
of their README examples.

Example:
    >>> import torch
    >>> fn = build("cross_entropy", 10, 1, torch.device("cpu"), torch.float32)
    >>> print(f"{float(fn(torch.zeros(2, 10), torch.tensor([0, 3]))):.4f}")  # log(10)
    2.3026
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Builder = Callable[[int, int, torch.device, torch.dtype], LossFn]

BASELINE = "cross_entropy"
BACKEND_ENV = "SMOOTHTOPK_BACKEND"  # smoothtopk.backends.ENV, read at every call


class Skipped(Exception):
    """The contender does not apply on this machine or configuration (not a failure)."""


def _require(module: str, package: str):
    """Import ``module``, or raise :class:`Skipped` naming the PyPI ``package`` when its
    top-level module is missing (an installed package that fails to import is an error)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise
        raise Skipped(f"not installed: {package}") from exc


def _cross_entropy(n, k, device, dtype) -> LossFn:
    return F.cross_entropy


def _cross_entropy_ls(n, k, device, dtype) -> LossFn:
    def fn(x, y):
        return F.cross_entropy(x, y, label_smoothing=0.1)

    return fn


def _eager_cross_entropy(x, y):
    return F.cross_entropy(x, y)


@functools.cache
def _compiled_cross_entropy() -> LossFn:
    # One compiled function per process (a configuration runs in its own process): the memory
    # and timing phases reuse the graphs compiled by the first call.
    return torch.compile(_eager_cross_entropy, fullgraph=True, backend="inductor", dynamic=False)


def _ce_compiled(n, k, device, dtype) -> LossFn:
    compiled = _compiled_cross_entropy()

    def fn(x, y):
        return compiled(x, y)

    # Inductor donates the saved buffers to the backward, which then refuses to run twice on
    # one graph (retain_graph=True): only forward and forward+backward can be timed.
    fn.untimed = {"backward": "backward alone: the compiled graph donates its buffers"}
    return fn


def _liger_ce(n, k, device, dtype) -> LossFn:
    # Liger-Kernel's fused cross-entropy (Triton, CUDA only). Its forward computes the gradient
    # and writes it into the input's storage (the harness gives each contender its own copy of
    # the scores); its backward then only scales it, so compare forward+backward.
    if device.type != "cuda":
        raise Skipped("needs CUDA")
    liger_cross_entropy = _require(
        "liger_kernel.transformers.functional", "liger-kernel"
    ).liger_cross_entropy

    def fn(x, y):
        out = liger_cross_entropy(x, y)
        return out[0] if isinstance(out, tuple) else out  # older releases: (loss, z_loss)

    return fn


def _pinned(backend: str, fn: LossFn) -> LossFn:
    """``fn`` run with ``SMOOTHTOPK_BACKEND=backend``: each of our contenders sets its own
    value before its call, so contenders that are interleaved in one process cannot leak a
    forced backend into each other. The check reads the variable as the loss does
    (:func:`smoothtopk.backends.setting`, a dictionary look-up, 0.1 us); ``os.environ.get``
    cost the timed call about 1 us more than the loss pays itself (issue #20)."""
    from smoothtopk import backends

    environ = os.environ
    pinned = [object()]  # the variable as backends.setting reads it once pinned

    def call(x, y):
        if backends.setting()[0] != pinned[0]:
            environ[BACKEND_ENV] = backend
            pinned[0] = backends.setting()[0]
        return fn(x, y)

    return call


def _package(name: str, backend: str = "auto") -> Builder:
    """Loss ``name`` of the package's registry (:data:`smoothtopk.registry.LOSSES`): its
    functional with ``k`` set to the configuration's top-k (where the loss takes ``k``) and its
    other options at their registered defaults, run with ``SMOOTHTOPK_BACKEND=backend``. The
    functional is called as a user calls it, ``loss(x, y, k=k)`` (no ``**options`` unpacked
    per call: the harness's own cost is not the loss's)."""

    def build(n, k, device, dtype) -> LossFn:
        from smoothtopk import backends
        from smoothtopk.registry import get

        spec = get(name)
        functional = spec.functional
        if "k" in spec.options:

            def loss(x, y):
                return functional(x, y, k=k)

        else:
            loss = functional
        fn = _pinned(backend, loss)
        if name == "smooth-svm":  # the one loss with backends

            def backend_of(x):
                os.environ[BACKEND_ENV] = backend
                return backends.select(x.detach().reshape(-1, x.shape[-1]), k).NAME

            fn.backend_of = backend_of
        return fn

    return build


def _pytopk(n, k, device, dtype) -> LossFn:
    # Garcin et al. (ICML 2022): smoothed top-k calibrated hinge, README example epsilon=1.0,
    # default n_sample=5. It smooths the (k+1)-th largest score, so it needs k + 1 <= n.
    pytopk = _require("pytopk", "pytopk")
    if not k + 1 <= n:
        raise ValueError(f"BalNoisedTopK needs k + 1 <= n classes, got k={k}, n={n}")
    return pytopk.BalNoisedTopK(k=k, epsilon=1.0).to(device)


def _quiet_import_difftopk():
    # difftopk prints a notice on import when the optional torch-sparse is missing.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _require("difftopk", "difftopk")


def _difftopk(method: str) -> Builder:
    def build(n, k, device, dtype) -> LossFn:
        # Petersen et al. (ICML 2022), README signature: P_K puts 1/2 on top-1 and 1/2 on
        # top-k (the README's [.5, 0, 0, 0, .5] for k=5), inverse temperature 2, Cauchy
        # distribution for the sorting networks, m=16 scores hard-selected before sorting
        # (the package asserts k < m < n).
        difftopk = _quiet_import_difftopk()
        # The package's own checks fail with bare assertions; say what they check.
        if not k < 16 < n:
            raise ValueError(f"difftopk needs k < m < n; here k={k}, m=16, n={n}")
        if method in ("bitonic", "splitter_selection"):
            _require("torch_sparse", f"torch-sparse (difftopk '{method}' is sparse)")
        p_k = [1.0] if k == 1 else [0.5] + [0.0] * (k - 2) + [0.5]
        module = difftopk.TopKCrossEntropyLoss(
            diffsort_method=method,
            inverse_temperature=2.0,
            p_k=p_k,
            n=n,
            m=16,
            distribution="cauchy",
            art_lambda=None,
            device=str(device),
            top1_mode="sm",
        )

        def fn(x, y):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return module(x, y)

        return fn

    return build


@dataclass(frozen=True)
class Contender:
    build: Builder
    description: str
    suites: frozenset[str] = frozenset()  # the suites of benchmarks.run that run it by default


def _c(build: Builder, description: str, *suites: str) -> Contender:
    return Contender(build, description, frozenset(suites))


_CPU = ("quick", "full")
_GPU = ("gpu", "gpu-quick", "gpu-full")
_ALL = (*_CPU, *_GPU, "overhead")
_LIGER = "`liger_kernel.transformers.functional.liger_cross_entropy(x, y)` (fused, CUDA only)"
_DIFF_BITONIC = "`difftopk.TopKCrossEntropyLoss('bitonic', ...)` as above (needs torch-sparse)"

CONTENDERS: dict[str, Contender] = {
    BASELINE: _c(
        _cross_entropy, "`F.cross_entropy(x, y)` (the baseline: every ratio is to it)", *_ALL
    ),
    "ce_compiled": _c(
        _ce_compiled,
        "`torch.compile(F.cross_entropy, fullgraph=True, backend='inductor', dynamic=False)`, "
        "compiled by the untimed first call",
        *_GPU,
    ),
    "liger_ce": _c(_liger_ce, _LIGER, *_GPU),
    "smooth_topk": _c(
        _package("smooth-svm"),
        "`smoothtopk.smooth_topk_svm_loss(x, y, k=k, tau=1.0, alpha=1.0)` (ours, "
        "`SMOOTHTOPK_BACKEND=auto`: the fused CPU kernel on CPU, the Triton kernel on CUDA)",
        *_ALL,
    ),
    "smooth_topk_pytorch": _c(
        _package("smooth-svm", "pytorch"),
        "the same with `SMOOTHTOPK_BACKEND=pytorch` (ours, PyTorch operations: what the fused "
        "kernels replace)",
        *_GPU,
    ),
    "hard_topk": _c(
        _package("hard-svm"),
        "`smoothtopk.topk_svm_loss(x, y, k=k, alpha=1.0)` (ours, tau -> 0 limit)",
        *_CPU,
        "overhead",
    ),
    "ce_label_smoothing": _c(
        _cross_entropy_ls, "`F.cross_entropy(x, y, label_smoothing=0.1)`", *_CPU
    ),
    "pytopk": _c(_pytopk, "`pytopk.BalNoisedTopK(k=k, epsilon=1.0)` (n_sample=5)", *_CPU),
    "difftopk_softsort": _c(
        _difftopk("softsort"),
        "`difftopk.TopKCrossEntropyLoss('softsort', inverse_temperature=2, "
        "p_k=[.5, 0, ..., .5], m=16)`",
        *_CPU,
    ),
    "difftopk_bitonic": _c(_difftopk("bitonic"), _DIFF_BITONIC, *_CPU),
    "difftopk_bitonic_dense": _c(
        _difftopk("bitonic__non_sparse"),
        "`difftopk.TopKCrossEntropyLoss('bitonic__non_sparse', ...)`",
    ),
}


def suite(name: str) -> list[str]:
    """The contenders that the suite ``name`` of ``benchmarks.run`` runs by default."""
    return [c for c, entry in CONTENDERS.items() if name in entry.suites]


def description(name: str) -> str:
    entry = CONTENDERS.get(name)
    return entry.description if entry else name


def build(name: str, n: int, k: int, device: torch.device, dtype: torch.dtype) -> LossFn:
    if name not in CONTENDERS:
        raise KeyError(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")
    return CONTENDERS[name].build(n, k, device, dtype)
