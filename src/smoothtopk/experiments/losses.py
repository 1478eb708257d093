"""Losses by name, as the registry :data:`smoothtopk.losses.LOSSES` lists them: ``ce``
(cross-entropy), ``smooth-svm`` (the paper's L_{k,tau} with margin alpha), ``hard-svm`` (its
tau -> 0 limit) and every comparator (``hinge-alpha``, ``trunc-entropy``, ...).

A loss receives those of the run options ``k``, ``tau``, ``alpha``, ``epsilon``,
``label_smoothing``, ``tau_la`` and ``max_margin`` that are among its registered options
(:func:`loss_params`; ``max_margin=None`` keeps each loss's default); its other options keep
their defaults. A loss that needs the training-set class counts
(:attr:`smoothtopk.losses.LossEntry.needs_class_counts`: ``ce-logit-adjusted``,
``smooth-svm-ldam``, ``smoothed-calibrated-hinge-ldam``) receives them as ``class_counts``
(:func:`build_loss`; the runner gives the counts of the labels it trains on).
"""

from __future__ import annotations

from torch import nn

from smoothtopk import losses as registry

LOSSES = tuple(registry.LOSSES)

#: run options that may be handed to a loss's constructor
RUN_OPTIONS = ("k", "tau", "alpha", "epsilon", "label_smoothing", "tau_la", "max_margin")
_SHORT = {"k": "k", "tau": "tau", "alpha": "alpha", "epsilon": "eps", "label_smoothing": "ls",
          "tau_la": "tla", "max_margin": "mm"}  # fmt: skip


def check_loss(name: str) -> str:
    return registry.get(name).name


def loss_params(name: str) -> tuple[str, ...]:
    """The run options (:data:`RUN_OPTIONS`) that loss ``name`` uses."""
    options = registry.get(name).options
    return tuple(p for p in RUN_OPTIONS if p in options)


def check_loss_args(
    name: str,
    k: int,
    tau: float,
    alpha: float,
    num_classes: int,
    epsilon: float = 1.0,
    label_smoothing: float = 0.1,
    tau_la: float = 1.0,
    max_margin: float | None = None,
) -> None:
    """Argument checks that need the number of classes (done before anything is written)."""
    params = loss_params(name)
    if "k" in params and not 1 <= k < num_classes:
        raise ValueError(f"k must satisfy 1 <= k < number of classes ({num_classes}), got {k}")
    if name == "smooth-svm" and not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if "alpha" in params and not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    build_loss(name, k, tau, alpha, epsilon, label_smoothing, tau_la, max_margin)  # its checks


def build_loss(
    name: str,
    k: int = 5,
    tau: float = 1.0,
    alpha: float = 1.0,
    epsilon: float = 1.0,
    label_smoothing: float = 0.1,
    tau_la: float = 1.0,
    max_margin: float | None = None,
    *,
    class_counts=None,
) -> nn.Module:
    """The loss module; ``class_counts`` (``(C,)``, training samples per class) goes to the
    losses that need them and is ignored by the others (``None``: balanced classes)."""
    spec = registry.get(name)
    options = _used_options(name, k, tau, alpha, epsilon, label_smoothing, tau_la, max_margin)
    if spec.needs_class_counts and class_counts is not None:
        options["class_counts"] = class_counts
    return spec.build(**options)


def _used_options(name, k, tau, alpha, epsilon, label_smoothing, tau_la=1.0, max_margin=None):
    """The options that loss ``name`` takes, with their values (``None``: its default)."""
    values = {"k": k, "tau": tau, "alpha": alpha, "epsilon": epsilon,
              "label_smoothing": label_smoothing, "tau_la": tau_la,
              "max_margin": max_margin}  # fmt: skip
    return {p: values[p] for p in loss_params(name) if values[p] is not None}


def loss_label(
    name: str,
    k: int = 5,
    tau: float = 1.0,
    alpha: float = 1.0,
    epsilon: float = 1.0,
    label_smoothing: float = 0.1,
    tau_la: float = 1.0,
    max_margin: float | None = None,
) -> str:
    """A short human label: ``CE``, ``L_{5,1} (alpha=1)``, ``hard top-5 SVM (alpha=1)``,
    ``hinge-alpha (k=5, alpha=1)``, ``ce-label-smoothing (label_smoothing=0.1)``."""
    if name == "ce":
        return "CE"
    if name == "smooth-svm":
        return f"L_{{{k},{tau:g}}} (alpha={alpha:g})"
    if name == "hard-svm":
        return f"hard top-{k} SVM (alpha={alpha:g})"
    if name not in registry.LOSSES:
        return name
    used = _used_options(name, k, tau, alpha, epsilon, label_smoothing, tau_la, max_margin)
    params = ", ".join(f"{p}={v:g}" for p, v in used.items())
    return f"{name} ({params})" if params else name


def loss_slug(
    name: str,
    k: int = 5,
    tau: float = 1.0,
    alpha: float = 1.0,
    epsilon: float = 1.0,
    label_smoothing: float = 0.1,
    tau_la: float = 1.0,
    max_margin: float | None = None,
) -> str:
    """The loss and the options it uses, for directory names: ``hinge-alpha-k5-alpha1``."""
    used = _used_options(name, k, tau, alpha, epsilon, label_smoothing, tau_la, max_margin)
    return "-".join([name] + [f"{_SHORT[p]}{v:g}" for p, v in used.items()])
