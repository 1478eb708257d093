"""Losses by name: ``ce`` (cross-entropy), ``smooth-svm`` (the paper's L_{k,tau} with margin
alpha) and ``hard-svm`` (its tau -> 0 limit), all from :mod:`smoothtopk` / :mod:`torch`."""

from __future__ import annotations

from torch import nn

LOSSES = ("ce", "smooth-svm", "hard-svm")


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return name


def check_loss_args(name: str, k: int, tau: float, alpha: float, num_classes: int) -> None:
    """Argument checks that need the number of classes (done before anything is written)."""
    check_loss(name)
    if name == "ce":
        return
    if not 1 <= k < num_classes:
        raise ValueError(f"k must satisfy 1 <= k < number of classes ({num_classes}), got {k}")
    if name == "smooth-svm" and not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")


def build_loss(name: str, k: int = 5, tau: float = 1.0, alpha: float = 1.0) -> nn.Module:
    check_loss(name)
    if name == "ce":
        return nn.CrossEntropyLoss()
    import smoothtopk

    if name == "smooth-svm":
        return smoothtopk.SmoothTopkSVMLoss(k=k, tau=tau, alpha=alpha)
    return smoothtopk.TopkSVMLoss(k=k, alpha=alpha)


def loss_label(name: str, k: int = 5, tau: float = 1.0, alpha: float = 1.0) -> str:
    """A short human label: ``CE``, ``L_{5,1} (alpha=1)``, ``hard top-5 SVM (alpha=1)``."""
    if name == "ce":
        return "CE"
    if name == "smooth-svm":
        return f"L_{{{k},{tau:g}}} (alpha={alpha:g})"
    if name == "hard-svm":
        return f"hard top-{k} SVM (alpha={alpha:g})"
    return name
