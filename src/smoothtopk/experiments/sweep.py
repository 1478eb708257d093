"""``smoothtopk sweep``: the cross product of losses x noise levels (or subset sizes, or
imbalance ratios of the long-tailed protocol) x seeds x loss hyper-parameters, one run
directory per combination, then a report with mean ± std over seeds.

Each run lives in ``OUT/<name>``, the name built from its settings (:func:`.rundir.run_name`).
Running the same sweep again skips every run whose ``results.json`` exists and continues
unfinished ones from their last checkpoint, so an interrupted sweep resumes where it stopped. A
hyper-parameter axis (``k``, ``tau``, ``alpha``, ``epsilon``, ``label_smoothing``) multiplies
only the losses that use it (:func:`.losses.loss_params`): ``--tau 0.1,1`` gives two
``smooth-svm`` runs per setting but one ``ce`` run.

The demo is the sweep preset ``demo-sweep`` (``smoothtopk demo``), ``demo-full`` its big sibling.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import rundir
from .checkpoint import atomic_write_json
from .config import FIELDS, PRESETS, Config, coerce, pick_preset, resolve
from .losses import LOSSES, check_loss, loss_params
from .report import write_report
from .train import Prepared, prepare_member
from .workers import train_all

#: options that take a list of values, one run per value
SWEPT = ("loss", "noise", "subset", "seed", "k", "tau", "alpha", "epsilon", "label_smoothing",
         "imbalance_ratio")  # fmt: skip
#: the axes of the data protocol (every loss gets each value), in run-name order
DATA_AXES = ("noise", "subset", "imbalance_ratio", "seed")
HYPER = ("k", "tau", "alpha", "epsilon", "label_smoothing")
NOISE_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8)

#: sweep presets: a config preset (the recipe) and default axes
SWEEP_PRESETS: dict[str, dict] = {
    # the demo: CE against L_{5,1} at noise 0 ... 0.8 on the embedded data, one seed
    "demo-sweep": {
        "preset": "demo",
        "axes": {"loss": ["ce", "smooth-svm"], "noise": list(NOISE_LEVELS)},
    },
    # every loss x noise 0 ... 0.8 x 3 seeds on the embedded data, the demo's recipe
    "demo-full": {
        "preset": "demo",
        "axes": {"loss": list(LOSSES), "noise": list(NOISE_LEVELS), "seed": [0, 1, 2]},
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


def expand(
    preset: str | None = None,
    yaml_values: dict | None = None,
    axes: dict[str, list] | None = None,
    fixed: dict | None = None,
) -> list[Config]:
    """The validated configs of the sweep. ``axes``: option -> list of values (those missing
    come from a sweep preset, a list in the YAML file, or the single resolved value);
    ``fixed``: single-valued options. Writes nothing."""
    yaml_values = dict(yaml_values or {})
    axes = {k: list(v) for k, v in (axes or {}).items()}
    fixed = dict(fixed or {})
    unknown = sorted(set(axes) - set(SWEPT))
    if unknown:
        raise ValueError(f"these options cannot be swept: {', '.join(unknown)}")
    preset = pick_preset(preset, yaml_values.pop("preset", None))
    if preset in SWEEP_PRESETS:
        for name, values in SWEEP_PRESETS[preset]["axes"].items():
            axes.setdefault(name, list(values))
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
    base = resolve(preset, yaml_values, fixed)
    losses = axes.get("loss", [base.loss])
    configs = []
    for loss in losses:
        names = list(DATA_AXES) + [h for h in HYPER if h in loss_params(loss)]
        names = [n for n in names if n in axes]
        for combo in itertools.product(*(axes[n] for n in names)):
            cli = {**fixed, "loss": loss, **dict(zip(names, combo, strict=True))}
            configs.append(resolve(preset, yaml_values, cli))
    seen: dict[str, Config] = {}
    for cfg in configs:
        name = rundir.run_name(cfg)
        if name in seen:
            raise ValueError(f"two runs of the sweep would share the directory name {name}")
        seen[name] = cfg
    return configs


STATUS_VERB = {"complete": "skip  ", "resume": "resume", "new": "train "}


@dataclass
class SweepRun:
    cfg: Config
    run_dir: str
    status: str  #: "complete" (skipped), "resume" (continued) or "new"
    prepared: Prepared | None = None


def plan(out: str, configs: list[Config], overwrite: bool = False) -> list[SweepRun]:
    """Check the sweep directory and every run, load the data of the runs still to train;
    writes nothing. Finished runs (``results.json``) are not touched unless ``overwrite``."""
    rundir.check_sweep_dir(out)
    runs = []
    for cfg in configs:
        run_dir = os.path.join(out, rundir.run_name(cfg))
        if not overwrite and rundir.is_finished(run_dir):
            changed = rundir.incompatible(rundir.saved_config(run_dir), cfg)
            if changed:
                raise ValueError(
                    f"{run_dir} was finished with other settings ({', '.join(changed)}); "
                    "choose another --out or pass --overwrite"
                )
            runs.append(SweepRun(cfg, run_dir, "complete"))
            continue
        prepared = prepare_member(cfg, run_dir, overwrite=overwrite)
        status = "new" if prepared.resume_from is None else "resume"
        runs.append(SweepRun(cfg, run_dir, status, prepared))
    return runs


def run(
    out: str,
    runs: list[SweepRun],
    overwrite: bool = False,
    jobs: int | None = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the runs not yet complete (``jobs`` worker processes, see
    :func:`.workers.train_all`), then write the report to ``OUT/report``. Returns the report
    with ``trained`` and ``skipped`` (run directories) and ``seconds``. ``OUT`` stays locked
    (:func:`.rundir.locked`) while the sweep runs: a second sweep there raises Busy."""
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    start = time.perf_counter()
    with rundir.locked(out):
        if overwrite:
            rundir.clear_directory(out)
        names = [os.path.basename(r.run_dir) for r in runs]
        atomic_write_json(os.path.join(out, rundir.SWEEP), {"runs": names})
        todo = [r.prepared for r in runs if r.status != "complete"]
        for r in runs:
            note = " (complete)" if r.status == "complete" else ""
            log(f"{STATUS_VERB[r.status]} {os.path.basename(r.run_dir)}{note}")
        log(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} complete, {len(todo)} to train")
        if todo:
            train_all(todo, jobs=jobs, progress=progress, log=log, desc="sweep runs")
        report = write_report([r.run_dir for r in runs], os.path.join(out, "report"))
    report["trained"] = [p.run_dir for p in todo]
    report["skipped"] = [r.run_dir for r in runs if r.status == "complete"]
    report["seconds"] = time.perf_counter() - start
    return report
