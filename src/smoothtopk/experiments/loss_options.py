"""The one table of a run's loss options (:data:`OPTIONS`): ``k``, ``tau``, ``alpha``,
``epsilon``, ``label_smoothing``, ``tau_la`` and ``max_margin``, each once with its type,
default, short name for run names, help text, check, and whether a sweep's ``--grid`` may
select it.

Everything else is derived from it: the loss fields of :class:`.config.Config` (and so their
command-line options, YAML keys and ``--help``), :class:`.config.LossSpec`, the run names
(:func:`.losses.loss_slug`), the sweep's hyper-parameter axes (:data:`.sweep.HYPER`,
:data:`.config.SWEPT`), the options a grid may select (:data:`.report.selection.SELECTABLE`)
and their validation (:func:`check`). Adding an option is one :class:`LossOption` here (plus the
registered loss that takes it, in :mod:`smoothtopk.registry`).

Imports neither torch nor YAML (the command line builds its parser from this table).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FLOAT32_MAX = 3.4028234663852886e38  #: the largest float32: training computes in float32
SMALLEST_NORMAL = sys.float_info.min  #: the smallest normal double (about 2.2e-308)


@dataclass(frozen=True)
class LossOption:
    """One loss option. ``hint`` is the type as written in an annotation (``"float | None"``);
    ``check(value)`` returns why the value is refused (``"must be > 0"``) or ``None``."""

    name: str
    hint: str
    default: int | float | None
    short: str
    help: str
    check: Callable[[int | float], str | None]
    selectable: bool = True


def _beyond_float32(value: float) -> str | None:
    if value > FLOAT32_MAX:
        return f"must be at most {FLOAT32_MAX:.4g} (training computes in float32)"
    return None


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be >= 1"


def _non_negative(value: float) -> str | None:
    return _beyond_float32(value) if math.isfinite(value) and value >= 0 else "must be >= 0"


def _positive(value: float) -> str | None:
    return _beyond_float32(value) if math.isfinite(value) and value > 0 else "must be > 0"


def _temperature(value: float) -> str | None:
    if not (math.isfinite(value) and value > 0):
        return "must be > 0"
    if value < SMALLEST_NORMAL:
        return f"must be >= {SMALLEST_NORMAL:.4g} (smaller, 1 / (k tau) overflows)"
    return _beyond_float32(value)


def _fraction(value: float) -> str | None:
    return None if math.isfinite(value) and 0 <= value <= 1 else "must be in [0, 1]"


#: the losses that take probability targets, for --help (which imports no torch): the registry
#: (``LossEntry.probability_targets``) owns the fact, tests/experiments/test_exp_mixing.py holds
#: this copy to it
PROBABILITY_TARGETS = ("ce", "smooth-svm", "hard-svm")

OPTIONS: dict[str, LossOption] = {
    o.name: o
    for o in (
        LossOption("k", "int", 5, "k", "k of the top-k losses (below the number of classes)",
                   _at_least_one, selectable=False),
        LossOption("tau", "float", 1.0, "tau", "temperature of smooth-svm", _temperature),
        LossOption("alpha", "float", 1.0, "alpha", "margin of the SVM and hinge losses",
                   _non_negative),
        LossOption("epsilon", "float", 1.0, "eps", "noise scale of smoothed-calibrated-hinge",
                   _positive),
        LossOption("label_smoothing", "float | None", None, "ls",
                   "label smoothing in [0, 1] of ce-label-smoothing and of every loss that "
                   f"takes probability targets ({', '.join(PROBABILITY_TARGETS)}) (default: the "
                   "loss's, 0.1 for ce-label-smoothing, none for the others)", _fraction),
        LossOption("tau_la", "float", 1.0, "tla",
                   "logit-adjustment strength of ce-logit-adjusted, >= 0", _non_negative),
        LossOption("max_margin", "float | None", None, "mm",
                   "largest LDAM margin (rarest class) of smooth-svm-ldam and "
                   "smoothed-calibrated-hinge-ldam, >= 0 (default: the loss's, 1 and 0.5)",
                   _non_negative),
    )
}  # fmt: skip
NAMES = tuple(OPTIONS)  #: in run-name order
DEFAULTS = {name: o.default for name, o in OPTIONS.items()}
SELECTABLE = tuple(name for name, o in OPTIONS.items() if o.selectable)


def reasons(values: Mapping) -> list[str]:
    """Why each bad value of ``values`` (option name -> value; ``None`` for an optional one
    keeps the loss's default) is refused by the checks of :data:`OPTIONS`, in table order.

    Example:
        >>> reasons({"k": 0, "tau": 1.0, "alpha": -1.0})
        ['k must be >= 1, got 0', 'alpha must be >= 0, got -1.0']
    """
    out = []
    for name, value in values.items():
        option = OPTIONS[name]
        if value is None and option.default is None:
            continue
        reason = option.check(value)
        if reason is not None:
            out.append(f"{name} {reason}, got {value}")
    return out


def check(values: Mapping) -> dict:
    """``values`` after the checks of :data:`OPTIONS`; ValueError naming every bad option
    (:func:`reasons`, joined by ``; ``)."""
    bad = reasons(values)
    if bad:
        raise ValueError("; ".join(bad))
    return dict(values)


def with_defaults(values: Mapping | None = None) -> dict:
    """Every option: those of ``values``, the table's defaults for the others."""
    unknown = sorted(set(values or {}) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown loss option(s): {', '.join(unknown)}")
    return {**DEFAULTS, **(values or {})}
