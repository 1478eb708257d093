"""``smoothtopk sweep``: the cross product of losses x noise levels (or subset sizes, or
imbalance ratios of the long-tailed protocol) x seeds x loss hyper-parameters, one run
directory per combination, then a report with mean ± std over seeds.

Each run lives in ``OUT/<name>``, the name built from its settings (:func:`.rundir.run_name`).
Running the same sweep again skips every run whose ``results.json`` exists, leaves the runs that
a live trainer holds (:mod:`.claims`) or whose cluster job waits to them, and continues
unfinished and failed ones from their last checkpoint, so an interrupted sweep resumes where it
stopped. The runs train in worker processes here or, with ``--launcher submitit``, as the tasks
of a job array (:mod:`.cluster`). A
hyper-parameter axis (``k``, ``tau``, ``alpha``, ``epsilon``, ``label_smoothing``, ``tau_la``,
``max_margin``) multiplies only the losses that use it (:func:`.losses.loss_params`):
``--tau 0.1,1`` gives two ``smooth-svm`` runs per setting but one ``ce`` run.

A *grid* (``--grid 'smooth-svm:tau=0.1,1,10;lr=0.03,0.1'``, or ``grid:`` in the YAML file)
gives each loss its own small set of options to choose from
(:data:`.report.selection.SELECTABLE`:
``lr`` and ``weight_decay`` for every loss, ``tau``, ``alpha``, ``epsilon``, ``label_smoothing``,
``tau_la``, ``max_margin`` where the loss uses them); the report then selects, per loss, noise
level (or subset) and seed, the configuration with the best clean validation top-5
(:func:`.report.selection.select_runs`).

The demo is the sweep preset ``demo-sweep`` (``smoothtopk demo``), ``demo-full`` its big sibling;
``noise-select`` and ``subsets-select`` are the paper's two protocols with per-loss selection,
``longtail-select`` the long-tailed protocol (imbalance ratios 10 and 100) with the same rule;
``noise1-select``, ``tau-study``, ``k-study``, ``group-size``, ``nonsmooth-select``,
``nonsmooth-wide``, ``noise-fair``, ``subsets-fair`` and ``longtail-fair`` (the three protocols
with equal grids and 5 seeds) are #22's studies (docs/results.md).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from . import claims, cluster, loss_options, records, rundir
from .checkpoint import atomic_write_json
from .config import (
    FIELDS,
    PRESETS,
    SWEPT,
    Config,
    Problems,
    check_all,
    coerce,
    pick_preset,
    reasons_of,
    resolve,
)
from .losses import LOSSES, check_loss, loss_params
from .report.selection import grid_options
from .report.write import write_report
from .train import Prepared, prepare_member
from .workers import train_all

#: the axes of the data protocol (every loss gets each value), in run-name order
DATA_AXES = ("noise", "subset", "imbalance_ratio", "lookalike_group_size", "seed")
HYPER = loss_options.NAMES  #: the loss options (:mod:`.loss_options`), in run-name order
NOISE_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8)
#: balanced training subsets of the embedded data (4,500 training images; 39 of the rarest class)
SUBSETS = ("500", "1000", "2000", "3000", "all")
#: the per-loss grid of the selection presets: tau on powers of ten, one learning-rate grid
LEARNING_RATES = [0.03, 0.1, 0.3]
#: rates beyond LEARNING_RATES on both sides: with them a loss has 0.003 ... 1.0
WIDER_LEARNING_RATES = [0.003, 0.01, 1.0]
TAUS = [0.1, 1.0, 10.0]
SELECT_GRID = {
    "ce": {"lr": LEARNING_RATES},
    "smooth-svm": {"tau": TAUS, "lr": LEARNING_RATES},
}
#: equal-sized grids (#22): each loss 4 learning rates x 3 values of its own hyper-parameter
FAIR_RATES = [0.01, 0.03, 0.1, 0.3]
FAIR_GRID = {
    "ce": {"lr": FAIR_RATES, "label_smoothing": [0.0, 0.1, 0.3]},
    "smooth-svm": {"lr": FAIR_RATES, "tau": TAUS},
}
#: the noise-free protocol's equal grids: one step lower in both (noise-fair's p = 0 cells
#: selected lr 0.01 for CE and tau 0.1 for L_{5,tau} at their grids' lower edges), 15 each
CLEAN_FAIR_RATES = [0.003, 0.01, 0.03, 0.1, 0.3]
CLEAN_FAIR_GRID = {
    "ce": {"lr": CLEAN_FAIR_RATES, "label_smoothing": [0.0, 0.1, 0.3]},
    "smooth-svm": {"lr": CLEAN_FAIR_RATES, "tau": [0.01, 0.1, 1.0]},
}

#: the long-tailed protocol's grid: the selection grid, and the long-tailed losses' learning
#: rate and temperature (their margins / adjustment strength at the defaults of the papers)
LONG_TAIL_LOSSES = ("ce", "smooth-svm", "ce-logit-adjusted", "smooth-svm-ldam",
                    "smoothed-calibrated-hinge-ldam")  # fmt: skip
LONG_TAIL_GRID = {
    **SELECT_GRID,
    "ce-logit-adjusted": SELECT_GRID["ce"],
    "smooth-svm-ldam": SELECT_GRID["smooth-svm"],
    "smoothed-calibrated-hinge-ldam": SELECT_GRID["ce"],
}
IMBALANCE_RATIOS = (10.0, 100.0)
#: the long-tailed protocol's equal grids (#22): each loss FAIR_RATES x 3 values of its own
#: hyper-parameter (CE's label smoothing, the temperature, the logit-adjustment strength, the
#: largest LDAM margin of the calibrated hinge: half, once and twice its default)
LONG_TAIL_FAIR_GRID = {
    **FAIR_GRID,
    "ce-logit-adjusted": {"lr": FAIR_RATES, "tau_la": [0.5, 1.0, 2.0]},
    "smooth-svm-ldam": {"lr": FAIR_RATES, "tau": TAUS},
    "smoothed-calibrated-hinge-ldam": {"lr": FAIR_RATES, "max_margin": [0.25, 0.5, 1.0]},
}
#: the non-smooth losses of the paper's comparison, each with the selection grid's learning
#: rates (#22: they ran at one untuned rate before)
NON_SMOOTH_LOSSES = ("hard-svm", "hinge-alpha", "hinge-beta", "trunc-entropy")
#: the temperature study: tau on powers of ten around the selection grid's, both ends included
TAU_STUDY = (0.001, 0.01, 0.1, 1.0, 10.0)
#: the k study: the k the smooth loss trains with (every run evaluates top-1 ... top-10)
K_STUDY = (1, 2, 5, 10)
#: the group-size artefact: the embedded data's look-alike groups of 3, 5 (its own) and 10
LOOKALIKE_GROUP_SIZES = (3, 5, 10)
#: the noise levels of the studies that are not the noise protocol itself
STUDY_NOISE = (0.0, 0.4, 0.8)

#: the non-smooth losses' studies (nonsmooth-select, nonsmooth-wide): noise 0 ... 0.8, 3 seeds
NON_SMOOTH_AXES = {"loss": list(NON_SMOOTH_LOSSES), "noise": list(NOISE_LEVELS), "seed": [0, 1, 2]}


def _fair_preset(protocol: str, values: list, grid: dict) -> dict:
    """A protocol (its data axis and values) with equal grids for CE and L_{5,tau} (``grid``:
    :data:`FAIR_GRID` or :data:`CLEAN_FAIR_GRID`) and 5 seeds for the top-1 comparisons (#22)."""
    seeds = [0, 1, 2, 3, 4]
    return {
        "preset": "demo",
        "axes": {"loss": ["ce", "smooth-svm"], protocol: values, "seed": seeds},
        "grid": grid,
    }


#: sweep presets: a config preset (the recipe) and default axes
SWEEP_PRESETS: dict[str, dict] = {
    # the demo: CE against L_{5,1} at noise 0 ... 0.8 on the embedded data, one seed
    "demo-sweep": {
        "preset": "demo",
        "axes": {"loss": ["ce", "smooth-svm"], "noise": list(NOISE_LEVELS)},
    },
    # every loss x noise 0 ... 0.8 x 5 seeds (each its own noise draw) on the embedded data,
    # the demo's recipe (#22: 5 seeds where top-1 is compared)
    "demo-full": {
        "preset": "demo",
        "axes": {"loss": list(LOSSES), "noise": list(NOISE_LEVELS), "seed": [0, 1, 2, 3, 4]},
    },
    # the noise protocol with per-loss selection on clean validation: CE against L_{5,tau},
    # noise 0 ... 0.8 x 3 seeds x 3 (CE) + 9 (L_{5,tau}) configurations = 180 runs
    "noise-select": {
        "preset": "demo",
        "axes": {"loss": ["ce", "smooth-svm"], "noise": list(NOISE_LEVELS), "seed": [0, 1, 2]},
        "grid": SELECT_GRID,
    },
    # the subsets protocol (no noise): balanced training subsets of decreasing size, the same
    # losses, grid and selection = 180 runs
    "subsets-select": {
        "preset": "demo",
        "axes": {"loss": ["ce", "smooth-svm"], "subset": list(SUBSETS), "seed": [0, 1, 2]},
        "grid": SELECT_GRID,
    },
    # the noise protocol with equal grids (#22): 12 configurations per loss — learning rates
    # 0.01 ... 0.3 for both, CE's label smoothing (0, 0.1, 0.3) against L_{5,tau}'s tau (0.1,
    # 1, 10) — and 5 seeds for the top-1 comparisons = 2 x 12 x 5 x 5 = 600 runs
    "noise-fair": _fair_preset("noise", list(NOISE_LEVELS), FAIR_GRID),
    # the subsets protocol with equal grids one step lower (no noise: CLEAN_FAIR_GRID) and 5
    # seeds (#22: subsets-select gave CE 3 configurations against 9, and CE's rate sat on the
    # grid's lower edge in 9 of 15 cells) = 2 x 15 x 5 subsets x 5 seeds = 750 runs
    "subsets-fair": _fair_preset("subset", list(SUBSETS), CLEAN_FAIR_GRID),
    # the paper's noise p = 1.0 (every label of a look-alike group replaced by another of its
    # group), the noise-select losses and grid, 5 seeds = 60 runs (#22)
    "noise1-select": {
        "preset": "demo",
        "axes": {"loss": ["ce", "smooth-svm"], "noise": [1.0], "seed": [0, 1, 2, 3, 4]},
        "grid": SELECT_GRID,
    },
    # the temperature study: L_{5,tau} at each tau (an axis: the report's results table has a
    # row per tau; no selection, which would pick one tau), CE beside it, noise 0, 0.4, 0.8,
    # the recipe's learning rate = (5 + 1) x 3 x 3 seeds = 54 runs (#22)
    "tau-study": {
        "preset": "demo",
        "axes": {
            "loss": ["ce", "smooth-svm"],
            "tau": list(TAU_STUDY),
            "noise": list(STUDY_NOISE),
            "seed": [0, 1, 2],
        },  # fmt: skip
    },
    # the k study: L_{k,1} trained at each k (an axis: a row and a curve per k, no selection),
    # CE beside it, the recipe's learning rate; the report's topk.md and accuracy_vs_k.png
    # give test top-1 ... top-10 of each = (4 + 1) x 3 noise levels x 3 seeds = 45 runs (#22)
    "k-study": {
        "preset": "demo",
        "axes": {
            "loss": ["ce", "smooth-svm"],
            "k": list(K_STUDY),
            "noise": list(STUDY_NOISE),
            "seed": [0, 1, 2],
        },  # fmt: skip
    },
    # the group-size artefact: CE and L_{5,1} on the embedded data with look-alike groups of
    # 3, 5 and 10 classes (the 100 classes stay), the noise protocol's consecutive groups of 5,
    # the same 3 learning rates for both losses and the selection = 2 x 3 x 3 sizes x 3 noise
    # levels x 3 seeds = 162 runs (#22: does k = 5 = the group size favour the top-5 loss?)
    "group-size": {
        "preset": "demo",
        "axes": {
            "loss": ["ce", "smooth-svm"],
            "lookalike_group_size": list(LOOKALIKE_GROUP_SIZES),
            "noise": list(STUDY_NOISE),
            "seed": [0, 1, 2],
        },  # fmt: skip
        "grid": {"ce": {"lr": LEARNING_RATES}, "smooth-svm": {"lr": LEARNING_RATES}},
    },
    # the non-smooth losses with their own learning-rate grid, noise 0 ... 0.8 x 3 seeds
    # = 4 x 5 x 3 x 3 = 180 runs; their training accuracy per epoch is in each run's record
    # (the paper's "they fail to fit the training data", #22)
    "nonsmooth-select": {
        "preset": "demo",
        "axes": NON_SMOOTH_AXES,
        "grid": {loss: {"lr": LEARNING_RATES} for loss in NON_SMOOTH_LOSSES},
    },
    # nonsmooth-select's grid widened on both sides (its selected rates all sat on an edge):
    # the same runs at 0.003, 0.01 and 1.0 = 180 runs; report the two directories together
    # for six rates per loss (#22)
    "nonsmooth-wide": {
        "preset": "demo",
        "axes": NON_SMOOTH_AXES,
        "grid": {loss: {"lr": WIDER_LEARNING_RATES} for loss in NON_SMOOTH_LOSSES},
    },
    # the long-tailed protocol (#14): CIFAR-100-LT profiles R = 10, 100 of the embedded data
    # (balanced validation and test), five losses, the same selection = 2 x 3 x 27 = 162 runs
    "longtail-select": {
        "preset": "demo",
        "axes": {
            "loss": list(LONG_TAIL_LOSSES),
            "imbalance_ratio": list(IMBALANCE_RATIOS),
            "seed": [0, 1, 2],
        },  # fmt: skip
        "grid": LONG_TAIL_GRID,
    },
    # the long-tailed protocol with equal grids (#22: longtail-select gave the three CE-like
    # losses 3 configurations against 9) and 5 seeds = 5 losses x 12 x 2 ratios x 5 = 600 runs
    "longtail-fair": {
        "preset": "demo",
        "axes": {
            "loss": list(LONG_TAIL_LOSSES),
            "imbalance_ratio": list(IMBALANCE_RATIOS),
            "seed": [0, 1, 2, 3, 4],
        },  # fmt: skip
        "grid": LONG_TAIL_FAIR_GRID,
    },
}


def parse_list(name: str, text: str) -> list:
    """``"0,0.2,0.4"`` -> ``[0.0, 0.2, 0.4]``, typed as the config option ``name``."""
    hint = FIELDS[name].type  # the annotation as written: "int", "int | None", "float", ...
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise ValueError(f"--{name.replace('_', '-')} needs comma-separated values, got {text!r}")
    values = []
    for item in items:
        try:
            value = int(item) if hint in ("int", "int | None") else item
            if hint in ("float", "float | None"):
                value = float(item)
        except ValueError:
            raise ValueError(f"--{name.replace('_', '-')}: bad value {item!r}") from None
        values.append(value)
    return list(dict.fromkeys(values))


def has_grid(preset: str | None) -> bool:
    """Whether ``preset`` is a sweep preset with a per-loss grid (then the report selects)."""
    return bool(SWEEP_PRESETS.get(preset or "", {}).get("grid"))


def _check_grid_option(loss: str, name: str) -> None:
    if name not in grid_options(loss):
        raise ValueError(
            f"--grid {loss}: {name!r} is not an option of {loss} a grid may vary; "
            f"choose from {', '.join(grid_options(loss))}"
        )


def parse_grid(texts: list[str]) -> dict[str, dict[str, list]]:
    """``--grid`` values -> ``{loss: {option: values}}``.

    Example:
        >>> parse_grid(["smooth-svm:tau=0.1,1,10;lr=0.05,0.1", "ce:lr=0.1"])
        {'smooth-svm': {'tau': [0.1, 1.0, 10.0], 'lr': [0.05, 0.1]}, 'ce': {'lr': [0.1]}}
    """
    grid: dict[str, dict[str, list]] = {}
    for text in texts:
        loss, colon, rest = (t.strip() for t in text.partition(":"))
        if not colon or not loss or not rest:
            raise ValueError(f"--grid needs LOSS:OPTION=V,V[;OPTION=V,...], got {text!r}")
        check_loss(loss)
        if loss in grid:
            raise ValueError(f"--grid gives {loss} twice; put all its options in one --grid")
        options: dict[str, list] = {}
        for item in rest.split(";"):
            name, equals, values = item.partition("=")
            name = name.strip().replace("-", "_")
            if not equals or not name:
                raise ValueError(f"--grid {loss}: expected OPTION=V,V..., got {item.strip()!r}")
            _check_grid_option(loss, name)
            if name in options:
                raise ValueError(f"--grid {loss}: {name} is given twice")
            try:
                options[name] = parse_list(name, values)
            except ValueError as err:
                raise ValueError(f"--grid {loss}: {err}") from None
        grid[loss] = options
    return grid


def grid_from_yaml(value) -> dict[str, dict[str, list]]:
    """The ``grid:`` mapping of a YAML file (``{loss: {option: value or list}}``), checked."""
    if not isinstance(value, dict):
        raise ValueError("'grid' in the config file must map losses to {option: values}")
    grid = {}
    for loss, options in value.items():
        check_loss(str(loss))
        if not isinstance(options, dict) or not options:
            raise ValueError(f"grid: {loss} must map options to values, got {options!r}")
        grid[loss] = {}
        for name, values in options.items():
            _check_grid_option(loss, str(name))
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ValueError(f"grid: {loss}: the list of values of {name} is empty")
            grid[loss][name] = list(dict.fromkeys(coerce(name, v) for v in values))
    return grid


def _grid_of(losses, preset_grid, yaml_grid, cli_grid, axes, fixed) -> dict:
    """The grid of each loss in ``losses``: the command line's, else the file's, else the
    preset's (a preset's entries for losses the sweep does not train are unused, a given
    grid's are an error); an option may not be both in a grid and swept by its own flag or
    fixed on the command line."""
    missing = [x for x in dict.fromkeys([*(yaml_grid or {}), *(cli_grid or {})]) if x not in losses]
    if missing:
        raise ValueError(f"--grid gives {', '.join(missing)}, which the sweep does not train "
                         f"(losses: {', '.join(losses)}); add it to --loss")  # fmt: skip
    merged = {**(preset_grid or {}), **(yaml_grid or {}), **(cli_grid or {})}
    grid = {loss: merged[loss] for loss in losses if loss in merged}
    for loss, options in grid.items():
        for name in options:
            if name in axes:
                raise ValueError(f"{name} is swept by --{name} and by --grid {loss}; give it once")
            if name in fixed:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} is fixed but --grid {loss} varies {name}; give it once")
    return grid


def expand(
    preset: str | None = None,
    yaml_values: dict | None = None,
    axes: dict[str, list] | None = None,
    fixed: dict | None = None,
    grid: dict[str, dict[str, list]] | None = None,
) -> list[Config]:
    """The validated configs of the sweep (:func:`expand_named` without the names)."""
    return [cfg for cfg, _ in expand_named(preset, yaml_values, axes, fixed, grid)]


def expand_named(
    preset: str | None = None,
    yaml_values: dict | None = None,
    axes: dict[str, list] | None = None,
    fixed: dict | None = None,
    grid: dict[str, dict[str, list]] | None = None,
) -> list[tuple[Config, str]]:
    """The validated configs of the sweep and their run names. ``axes``: option -> list of
    values (those missing come from a sweep preset, a list in the YAML file, or the single
    resolved value); ``fixed``: single-valued options; ``grid``: per loss, options -> values
    (:func:`parse_grid`; it replaces the file's and the preset's grid of that loss). Runs of
    a loss whose grid varies ``lr`` or ``weight_decay`` add them to their names. Writes
    nothing."""
    yaml_values = dict(yaml_values or {})
    axes = {k: list(v) for k, v in (axes or {}).items()}
    fixed = dict(fixed or {})
    unknown = sorted(set(axes) - set(SWEPT))
    if unknown:
        raise ValueError(f"these options cannot be swept: {', '.join(unknown)}")
    preset = pick_preset(preset, yaml_values.pop("preset", None))
    yaml_grid = grid_from_yaml(yaml_values.pop("grid")) if "grid" in yaml_values else None
    preset_grid = None
    if preset in SWEEP_PRESETS:
        for name, values in SWEEP_PRESETS[preset]["axes"].items():
            axes.setdefault(name, list(values))
        preset_grid = SWEEP_PRESETS[preset].get("grid")
        preset = SWEEP_PRESETS[preset]["preset"]
    elif preset is not None and preset not in PRESETS:
        choices = ", ".join(sorted(PRESETS) + sorted(SWEEP_PRESETS))
        raise ValueError(f"unknown preset {preset!r}; choose from {choices}")
    for name in SWEPT:
        value = yaml_values.get(name)
        if isinstance(value, list) and name not in ("milestones",):
            yaml_values.pop(name)
            axes.setdefault(name, [coerce(name, v) for v in value])
    for name, values in axes.items():
        if not values:
            raise ValueError(f"the list of values of {name} is empty")
    for loss in axes.get("loss", []):
        check_loss(loss)
    losses = _losses(preset, yaml_values, axes, fixed, {**(yaml_grid or {}), **(grid or {})})
    grid = _grid_of(losses, preset_grid, yaml_grid, grid, axes, fixed)
    named, reasons = [], []
    for loss in losses:
        for cli, extra in _runs_of(loss, axes, grid.get(loss, {}), fixed):
            try:
                cfg = resolve(preset, yaml_values, cli)
            except ValueError as err:  # every bad run of the sweep is reported at once
                reasons += reasons_of(err)
                continue
            named.append((cfg, rundir.run_name(cfg, extra)))
    if reasons:
        raise Problems(reasons)
    seen: set[str] = set()
    for _, name in named:
        if name in seen:
            raise ValueError(f"two runs of the sweep would share the directory name {name}")
        seen.add(name)
    return named


def _losses(preset, yaml_values: dict, axes: dict, fixed: dict, given: dict) -> list[str]:
    """The losses of the sweep: ``--loss``, else those of a given grid (unless the file names
    one), else the one of the shared options (which are resolved, and refused, here only then:
    otherwise each run's options are, with all their reasons at once)."""
    if "loss" in axes:
        return axes["loss"]
    if given and "loss" not in yaml_values:
        return list(given)
    return [resolve(preset, yaml_values, fixed).loss]


def _runs_of(loss: str, axes: dict, own: dict, fixed: dict):
    """The command-line options of each run of ``loss`` (its axes and its grid ``own``) and
    the recipe options its name adds (:data:`.rundir.NAME_EXTRAS`)."""
    names = list(DATA_AXES) + [h for h in HYPER if h in loss_params(loss)]
    names = [n for n in names if n in axes]
    values = [axes[n] for n in names] + list(own.values())
    extra = tuple(o for o in rundir.NAME_EXTRAS if o in own)
    for combo in itertools.product(*values):
        yield {**fixed, "loss": loss, **dict(zip(names + list(own), combo, strict=True))}, extra


#: the statuses of a planned run: (verb of its log line, whether this sweep trains it)
STATUS = {"complete": ("skip   ", False), "running": ("running", False),
          "queued": ("queued ", False), "failed": ("failed ", True), "resume": ("resume ", True),
          "new": ("train  ", True)}  # fmt: skip


@dataclass
class SweepRun:
    cfg: Config
    run_dir: str
    #: "complete" (skipped), "running" (claimed by a live trainer elsewhere), "queued" (its
    #: cluster job waits), "failed" (its last training failed or its trainer died: trained
    #: again), "resume" (continued) or "new"
    status: str
    prepared: Prepared | None = None
    note: str = ""  #: what the status line adds: the owner of a claim, the job, the failure

    @property
    def todo(self) -> bool:
        return STATUS[self.status][1]


def plan(
    out: str, configs: list[Config], overwrite: bool = False, names: list[str] | None = None
) -> list[SweepRun]:
    """Check the sweep directory and every run, load the data of the runs still to train;
    writes nothing. Finished runs (``results.json``) are not touched unless ``overwrite``, runs
    that a live trainer holds (:mod:`.claims`) or whose cluster job waits
    (:func:`.cluster.waiting`) are left to it. ``names``: the runs' directory names
    (:func:`expand_named`; default :func:`.rundir.run_name`)."""
    rundir.check_sweep_dir(out)
    if overwrite:
        _check_none_held(out)
    names = names if names is not None else [rundir.run_name(cfg) for cfg in configs]
    waiting = cluster.waiting(out) if os.path.isdir(out) else {}
    plans = [
        partial(_plan_one, os.path.join(out, n), c, overwrite, waiting)
        for c, n in zip(configs, names, strict=True)
    ]
    return check_all(*plans)  # every run's refusal at once


def _check_none_held(out: str) -> None:
    """``--overwrite`` deletes the sweep: refused while a live trainer holds one of its runs
    (nothing to check when the directory does not exist yet, as ``make demo-check``'s first
    run in a fresh clone)."""
    if not os.path.isdir(out):
        return
    held = [d for d in sorted(os.listdir(out)) if os.path.isdir(os.path.join(out, d))
            and claims.holder(os.path.join(out, d)) is not None]  # fmt: skip
    if held:
        raise ValueError(f"--overwrite would delete runs in training: {', '.join(held)} "
                         f"(claimed: {claims.CLAIM}); wait for them to end")  # fmt: skip


def _plan_one(run_dir: str, cfg: Config, overwrite: bool, waiting: dict) -> SweepRun:
    if not overwrite and rundir.is_finished(run_dir):
        changed = rundir.incompatible(records.read_config(run_dir), cfg)
        if changed:
            raise ValueError(
                f"{run_dir} was finished with other settings ({', '.join(changed)}); "
                "choose another --out or pass --overwrite"
            )
        return SweepRun(cfg, run_dir, "complete")
    owner = claims.holder(run_dir)
    if owner is not None:
        return SweepRun(cfg, run_dir, "running", note=owner.describe())
    job = waiting.get(os.path.basename(run_dir))
    if job is not None:
        return SweepRun(cfg, run_dir, "queued", note=f"job {job}")
    failure = "" if overwrite else _failure(run_dir)
    prepared = prepare_member(cfg, run_dir, overwrite=overwrite)
    status = "failed" if failure else "new" if prepared.resume_from is None else "resume"
    return SweepRun(cfg, run_dir, status, prepared, failure)


def _failure(run_dir: str) -> str:
    """Why the last training of the run failed: its ``failed.json``, or a claim whose owner
    died (killed, or its node lost); empty if it did not."""
    owner = claims.owner(run_dir)
    if owner is not None:  # not alive: :func:`plan` left the live ones alone
        return f"its trainer died: {owner.describe()}"
    failure = records.read_failure(run_dir)
    return f"{failure.get('error', '?')} (on {failure.get('host', '?')})" if failure else ""


def run(
    out: str,
    runs: list[SweepRun],
    overwrite: bool = False,
    jobs: int | None = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
    select: bool | None = None,
    launch: cluster.Launch | None = None,
) -> dict:
    """Train the runs still to train (``jobs`` worker processes, see
    :func:`.workers.train_all`; with ``launch``, submitted to a cluster: :func:`_submit`), then
    write the report to ``OUT/report`` (with the selection table if ``select``; ``None``: when
    some loss has several configurations, see :func:`.report.write.write_report`). Returns the
    report (``table`` None when there is none yet) with ``trained`` (or ``submitted``) and
    ``skipped`` (run directories) and ``seconds``. ``OUT`` stays locked
    (:func:`.rundir.locked`) while the sweep runs here: a second sweep there raises Busy."""
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    start = time.perf_counter()
    with rundir.locked(out):
        if overwrite:
            rundir.clear_directory(out)
        names = [os.path.basename(r.run_dir) for r in runs]
        atomic_write_json(os.path.join(out, rundir.SWEEP), {"runs": names})
        todo = _announce(runs, log)
        if launch is not None:
            result = _submit(out, runs, todo, launch, log, select)
        else:
            if todo:
                train_all([r.prepared for r in todo], jobs=jobs, progress=progress, log=log,
                          desc="sweep runs")  # fmt: skip
            result = _report(out, runs, select)
            result["trained"] = [r.run_dir for r in todo]
    result["skipped"] = [r.run_dir for r in runs if r.status == "complete"]
    result["seconds"] = time.perf_counter() - start
    return result


def _announce(runs: list[SweepRun], log) -> list[SweepRun]:
    """Log each run's status and the counts; returns the runs to train."""
    for r in runs:
        note = " (complete)" if r.status == "complete" else f": {r.note}" if r.note else ""
        log(f"{STATUS[r.status][0]} {os.path.basename(r.run_dir)}{note}")
    todo = [r for r in runs if r.todo]
    counts = {s: sum(r.status == s for r in runs) for s in STATUS}
    others = "".join(f", {counts[s]} {s}" for s in ("running", "queued") if counts[s])
    failed = f" ({counts['failed']} failed before)" if counts["failed"] else ""
    log(f"sweep: {len(runs)} runs, {counts['complete']} complete{others}, {len(todo)} to "
        f"train{failed}")  # fmt: skip
    return todo


def _report(out: str, runs: list[SweepRun], select: bool | None) -> dict:
    """The report of the sweep's runs (``OUT/report``); none while no run has an epoch."""
    try:
        return write_report([r.run_dir for r in runs], os.path.join(out, "report"), select)
    except ValueError as err:  # no run has finished an epoch yet (all running elsewhere)
        return {"table": None, "files": {}, "note": str(err)}


def _submit(out, runs, todo, launch: cluster.Launch, log, select) -> dict:
    """Submit ``todo`` to the cluster (:func:`.cluster.submit`); with ``launch.wait`` (always on
    submitit's ``debug`` executor, which runs the jobs when waited for) wait for the jobs. The
    report is written when every run of the sweep is complete."""
    jobs = cluster.submit(out, todo, launch, log) if todo else []
    failed = cluster.wait(jobs, log) if jobs and (launch.wait or launch.cluster == "debug") else []
    done = all(rundir.is_finished(r.run_dir) for r in runs)
    result = _report(out, runs, select) if done else {"table": None, "files": {}}
    if not done and not failed:
        result["note"] = (
            "the report is written when every run is done: run the same command again to see "
            f"the runs' state (or 'smoothtopk report {out}' for the runs with an epoch)"
        )
    result.update(submitted=[r.run_dir for r in todo], failed=failed, trained=[], jobs=jobs)
    return result
