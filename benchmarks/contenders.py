"""The contenders: name -> builder of a loss function ``fn(scores, target) -> scalar``.

A builder takes ``(n, k, device, dtype)`` and returns the loss function for ``n`` classes and
top-``k``; everything a contender needs to construct (modules, sorting networks) is built there,
outside the timed region. A builder or a call may raise (package not installed, ``k`` out of
range, out of memory): the harness records the error message instead of a number.

Third-party contenders are called as their packages publish them (PyPI ``pytopk`` and
``difftopk``, installed by the ``bench`` extra), with the hyper-parameters of their README
examples.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Builder = Callable[[int, int, torch.device, torch.dtype], LossFn]

BASELINE = "cross_entropy"


def _cross_entropy(n, k, device, dtype) -> LossFn:
    return F.cross_entropy


def _cross_entropy_ls(n, k, device, dtype) -> LossFn:
    def fn(x, y):
        return F.cross_entropy(x, y, label_smoothing=0.1)

    return fn


def _smooth_topk(n, k, device, dtype) -> LossFn:
    from smoothtopk import smooth_topk_svm_loss

    def fn(x, y):
        return smooth_topk_svm_loss(x, y, k=k, tau=1.0, alpha=1.0)

    return fn


def _hard_topk(n, k, device, dtype) -> LossFn:
    from smoothtopk import topk_svm_loss

    def fn(x, y):
        return topk_svm_loss(x, y, k=k, alpha=1.0)

    return fn


def _pytopk(n, k, device, dtype) -> LossFn:
    # Garcin et al. (ICML 2022): smoothed top-k calibrated hinge, README example epsilon=1.0,
    # default n_sample=5. It smooths the (k+1)-th largest score, so it needs k + 1 <= n.
    from pytopk import BalNoisedTopK

    if not k + 1 <= n:
        raise ValueError(f"BalNoisedTopK needs k + 1 <= n classes, got k={k}, n={n}")
    return BalNoisedTopK(k=k, epsilon=1.0).to(device)


def _quiet_import_difftopk():
    # difftopk prints a notice on import when the optional torch-sparse is missing.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import difftopk
    return difftopk


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
            try:
                import torch_sparse  # noqa: F401
            except ImportError as exc:
                raise ImportError(
                    f"difftopk '{method}' is sparse and needs torch-sparse (not installed)"
                ) from exc
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


CONTENDERS: dict[str, Builder] = {
    BASELINE: _cross_entropy,
    "smooth_topk": _smooth_topk,
    "hard_topk": _hard_topk,
    "ce_label_smoothing": _cross_entropy_ls,
    "pytopk": _pytopk,
    "difftopk_softsort": _difftopk("softsort"),
    "difftopk_bitonic": _difftopk("bitonic"),
    "difftopk_bitonic_dense": _difftopk("bitonic__non_sparse"),
}

DESCRIPTIONS: dict[str, str] = {
    BASELINE: "`F.cross_entropy(x, y)` (the baseline: every ratio is to it)",
    "smooth_topk": "`smoothtopk.smooth_topk_svm_loss(x, y, k=k, tau=1.0, alpha=1.0)` (ours)",
    "hard_topk": "`smoothtopk.topk_svm_loss(x, y, k=k, alpha=1.0)` (ours, tau -> 0 limit)",
    "ce_label_smoothing": "`F.cross_entropy(x, y, label_smoothing=0.1)`",
    "pytopk": "`pytopk.BalNoisedTopK(k=k, epsilon=1.0)` (n_sample=5)",
    "difftopk_softsort": (
        "`difftopk.TopKCrossEntropyLoss('softsort', inverse_temperature=2, "
        "p_k=[.5, 0, ..., .5], m=16)`"
    ),
    "difftopk_bitonic": (
        "`difftopk.TopKCrossEntropyLoss('bitonic', ...)` as above (sparse: needs torch-sparse)"
    ),
    "difftopk_bitonic_dense": "`difftopk.TopKCrossEntropyLoss('bitonic__non_sparse', ...)`",
}

QUICK_CONTENDERS = (
    BASELINE,
    "smooth_topk",
    "hard_topk",
    "ce_label_smoothing",
    "pytopk",
    "difftopk_softsort",
    "difftopk_bitonic",
)


def build(name: str, n: int, k: int, device: torch.device, dtype: torch.dtype) -> LossFn:
    if name not in CONTENDERS:
        raise KeyError(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")
    return CONTENDERS[name](n, k, device, dtype)
