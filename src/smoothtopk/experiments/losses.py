"""Losses by name, as the registry :data:`smoothtopk.registry.LOSSES` lists them: ``ce``
(cross-entropy), ``smooth-svm`` (the paper's L_{k,tau} with margin alpha), ``hard-svm`` (its
tau -> 0 limit) and every comparator (``hinge-alpha``, ``trunc-entropy``, ...).

A loss receives those of the run options ``k``, ``tau``, ``alpha``, ``epsilon``,
``label_smoothing``, ``tau_la`` and ``max_margin`` that are among its registered options
(:func:`loss_params`; ``max_margin=None`` keeps each loss's default); its other options keep
their defaults. A loss that needs the training-set class counts
(:attr:`smoothtopk.registry.LossEntry.needs_class_counts`: ``ce-logit-adjusted``,
``smooth-svm-ldam``, ``smoothed-calibrated-hinge-ldam``) receives them as ``class_counts``
(:func:`build_loss`; the runner gives the counts of the labels it trains on).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from smoothtopk import registry

from . import loss_options

LOSSES = tuple(registry.LOSSES)

#: run options that may be handed to a loss's constructor (:data:`.loss_options.NAMES`)
RUN_OPTIONS = loss_options.NAMES


def check_loss(name: str) -> str:
    return registry.get(name).name


def loss_params(name: str) -> tuple[str, ...]:
    """The run options (:data:`RUN_OPTIONS`) that loss ``name`` uses."""
    options = registry.get(name).options
    return tuple(p for p in RUN_OPTIONS if p in options)


def check_loss_args(name: str, options: Mapping | None, num_classes: int) -> None:
    """Argument checks that need the number of classes (done before anything is written):
    the table's checks, ``1 <= k < num_classes`` for every loss (k names the top-k metric),
    then the loss's own."""
    values = loss_options.check(loss_options.with_defaults(options))
    if not 1 <= values["k"] < num_classes:
        raise ValueError(
            f"k must satisfy 1 <= k < number of classes ({num_classes}), got {values['k']}"
        )
    build_loss(name, values)  # its checks


def build_loss(name: str, options: Mapping | None = None, *, class_counts=None) -> nn.Module:
    """The loss module with those of ``options`` (option name -> value; the table's defaults
    for those missing) that it takes; ``class_counts`` (``(C,)``, training samples per class)
    goes to the losses that need them and is ignored by the others (``None``: balanced)."""
    spec = registry.get(name)
    used = _used_options(name, options)
    if spec.needs_class_counts and class_counts is not None:
        used["class_counts"] = class_counts
    return spec.build(**used)


def _used_options(name: str, options: Mapping | None) -> dict:
    """The options that loss ``name`` takes, with their values (``None``: its default)."""
    values = loss_options.with_defaults(options)
    return {p: values[p] for p in loss_params(name) if values[p] is not None}


def loss_label(name: str, options: Mapping | None = None) -> str:
    """A short human label: ``CE``, ``L_{5,1} (alpha=1)``, ``hard top-5 SVM (alpha=1)``,
    ``hinge-alpha (k=5, alpha=1)``, ``ce-label-smoothing (label_smoothing=0.1)``."""
    values = loss_options.with_defaults(options)
    k, tau, alpha = values["k"], values["tau"], values["alpha"]
    if name == "ce":
        return "CE"
    if name == "smooth-svm":
        return f"L_{{{k},{tau:g}}} (alpha={alpha:g})"
    if name == "hard-svm":
        return f"hard top-{k} SVM (alpha={alpha:g})"
    if name not in registry.LOSSES:
        return name
    used = _used_options(name, values)
    params = ", ".join(f"{p}={v:g}" for p, v in used.items())
    return f"{name} ({params})" if params else name


def loss_slug(name: str, options: Mapping | None = None) -> str:
    """The loss and the options it uses, each by its short name, for directory names:
    ``hinge-alpha-k5-alpha1``."""
    used = _used_options(name, options)
    short = {n: o.short for n, o in loss_options.OPTIONS.items()}
    return "-".join([name] + [f"{short[p]}{v:g}" for p, v in used.items()])
