"""Losses by name, as the registry :data:`smoothtopk.registry.LOSSES` lists them: ``ce``
(cross-entropy), ``smooth-svm`` (the paper's L_{k,tau} with margin alpha), ``hard-svm`` (its
tau -> 0 limit) and every comparator (``hinge-alpha``, ``trunc-entropy``, ...).

A loss receives those of the run options ``k``, ``tau``, ``alpha``, ``epsilon``,
``label_smoothing``, ``tau_la`` and ``max_margin`` that are among its registered options
(:func:`loss_params`; ``max_margin=None`` keeps each loss's default); its other options keep
their defaults. A loss that takes probability targets
(:attr:`smoothtopk.registry.LossEntry.probability_targets`, e.g. ``ce``) also takes
``label_smoothing`` (``None``: none) and is the only kind that the runner's ``--mixup`` and
``--cutmix`` may train (:func:`target_reasons`); the other losses ignore ``label_smoothing``
unless they register it (``ce-label-smoothing``), as every option they do not use.

A loss that needs the training-set class counts
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
    """The run options (:data:`RUN_OPTIONS`) that loss ``name`` uses: its registered options
    and, for a loss that takes probability targets, ``label_smoothing``."""
    entry = registry.get(name)
    smoothing = ("label_smoothing",) if entry.probability_targets else ()
    return tuple(p for p in RUN_OPTIONS if p in entry.options or p in smoothing)


def takes_probability_targets(name: str) -> bool:
    """Whether loss ``name`` trains on probability targets (``--mixup``, ``--cutmix``):
    :attr:`smoothtopk.registry.LossEntry.probability_targets`, the one place that says so."""
    return registry.get(name).probability_targets


def target_reasons(name: str, mixing: dict) -> list[str]:
    """Why loss ``name`` cannot train with the batch ``mixing`` (option name -> Beta parameter,
    0: off): mixed batches need a loss that takes probability targets. (``label_smoothing``,
    a loss option, is ignored by a loss that does not use it, as every loss option.)

    Example:
        >>> (why,) = target_reasons("hinge-alpha", {"mixup": 0.2, "cutmix": 0.0})
        >>> why.startswith("--mixup needs a loss that takes probability targets (ce")
        True
    """
    mixed = [o for o, alpha in mixing.items() if alpha > 0]  # a negative one: its own check
    if not mixed or takes_probability_targets(name):
        return []
    flags = " and ".join("--" + o for o in mixed)
    return [f"{flags} {'needs' if len(mixed) == 1 else 'need'} a loss that takes probability "
            f"targets ({', '.join(_losses_with_targets())}); {name} does not"]  # fmt: skip


def _losses_with_targets() -> list[str]:
    return [n for n in LOSSES if takes_probability_targets(n)]


def default_label_smoothing(name: str) -> float | None:
    """The label smoothing of loss ``name`` when none is given: its registered option's
    default (0.1 for ``ce-label-smoothing``), else ``None`` (none)."""
    return registry.get(name).options.get("label_smoothing")


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
    ``hinge-alpha (k=5, alpha=1)``, ``ce-label-smoothing (label_smoothing=0.1)``, ``CE
    (label_smoothing=0.1)``."""
    values = loss_options.with_defaults(options)
    k, tau, alpha = values["k"], values["tau"], values["alpha"]
    smoothing = values["label_smoothing"]
    used = name in registry.LOSSES and "label_smoothing" in loss_params(name)
    ls = f"label_smoothing={smoothing:g}" if used and smoothing is not None else ""
    if name == "ce":
        return f"CE ({ls})" if ls else "CE"
    if name == "smooth-svm":
        return f"L_{{{k},{tau:g}}} (alpha={alpha:g}{', ' + ls if ls else ''})"
    if name == "hard-svm":
        return f"hard top-{k} SVM (alpha={alpha:g}{', ' + ls if ls else ''})"
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
