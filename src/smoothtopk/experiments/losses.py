"""Losses by name: ``ce`` (cross-entropy), ``smooth-svm`` (the paper's L_{k,tau} with margin
alpha), ``hard-svm`` (its tau -> 0 limit), all from :mod:`smoothtopk` / :mod:`torch`, and every
comparator of :data:`smoothtopk.comparators.LOSSES` (``hinge-alpha``, ``trunc-entropy``, ...).

A comparator receives those of the run options ``k``, ``alpha``, ``epsilon`` and
``label_smoothing`` that its constructor accepts (:func:`loss_params`); the other constructor
arguments keep their defaults.
"""

from __future__ import annotations

import inspect

from torch import nn

from smoothtopk.comparators import LOSSES as COMPARATORS

BUILTIN = ("ce", "smooth-svm", "hard-svm")
LOSSES = BUILTIN + tuple(COMPARATORS)

#: run options that may be handed to a comparator's constructor
COMPARATOR_OPTIONS = ("k", "alpha", "epsilon", "label_smoothing")
_BUILTIN_PARAMS = {"ce": (), "smooth-svm": ("k", "tau", "alpha"), "hard-svm": ("k", "alpha")}
_SHORT = {"k": "k", "tau": "tau", "alpha": "alpha", "epsilon": "eps", "label_smoothing": "ls"}


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return name


def loss_params(name: str) -> tuple[str, ...]:
    """The run options (among k, tau, alpha, epsilon, label_smoothing) that loss ``name`` uses."""
    check_loss(name)
    if name in _BUILTIN_PARAMS:
        return _BUILTIN_PARAMS[name]
    accepted = inspect.signature(COMPARATORS[name]).parameters
    return tuple(p for p in COMPARATOR_OPTIONS if p in accepted)


def check_loss_args(
    name: str,
    k: int,
    tau: float,
    alpha: float,
    num_classes: int,
    epsilon: float = 1.0,
    label_smoothing: float = 0.1,
) -> None:
    """Argument checks that need the number of classes (done before anything is written)."""
    params = loss_params(name)
    if "k" in params and not 1 <= k < num_classes:
        raise ValueError(f"k must satisfy 1 <= k < number of classes ({num_classes}), got {k}")
    if name == "smooth-svm" and not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if "alpha" in params and not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    build_loss(name, k, tau, alpha, epsilon, label_smoothing)  # the loss's own checks


def build_loss(
    name: str,
    k: int = 5,
    tau: float = 1.0,
    alpha: float = 1.0,
    epsilon: float = 1.0,
    label_smoothing: float = 0.1,
) -> nn.Module:
    check_loss(name)
    if name == "ce":
        return nn.CrossEntropyLoss()
    import smoothtopk

    if name == "smooth-svm":
        return smoothtopk.SmoothTopkSVMLoss(k=k, tau=tau, alpha=alpha)
    if name == "hard-svm":
        return smoothtopk.TopkSVMLoss(k=k, alpha=alpha)
    return COMPARATORS[name](**_used_options(name, k, tau, alpha, epsilon, label_smoothing))


def _used_options(name, k, tau, alpha, epsilon, label_smoothing) -> dict:
    """The options that loss ``name`` takes, with their values."""
    values = {"k": k, "tau": tau, "alpha": alpha, "epsilon": epsilon,
              "label_smoothing": label_smoothing}  # fmt: skip
    return {p: values[p] for p in loss_params(name)}


def loss_label(
    name: str,
    k: int = 5,
    tau: float = 1.0,
    alpha: float = 1.0,
    epsilon: float = 1.0,
    label_smoothing: float = 0.1,
) -> str:
    """A short human label: ``CE``, ``L_{5,1} (alpha=1)``, ``hard top-5 SVM (alpha=1)``,
    ``hinge-alpha (k=5, alpha=1)``, ``ce-label-smoothing (label_smoothing=0.1)``."""
    if name == "ce":
        return "CE"
    if name == "smooth-svm":
        return f"L_{{{k},{tau:g}}} (alpha={alpha:g})"
    if name == "hard-svm":
        return f"hard top-{k} SVM (alpha={alpha:g})"
    if name not in COMPARATORS:
        return name
    used = _used_options(name, k, tau, alpha, epsilon, label_smoothing)
    params = ", ".join(f"{p}={v:g}" for p, v in used.items())
    return f"{name} ({params})" if params else name


def loss_slug(
    name: str,
    k: int = 5,
    tau: float = 1.0,
    alpha: float = 1.0,
    epsilon: float = 1.0,
    label_smoothing: float = 0.1,
) -> str:
    """The loss and the options it uses, for directory names: ``hinge-alpha-k5-alpha1``."""
    used = _used_options(name, k, tau, alpha, epsilon, label_smoothing)
    return "-".join([name] + [f"{_SHORT[p]}{v:g}" for p, v in used.items()])
