"""Loading finished (or running) runs for a report: the run directories among the paths given,
and each run's config, epoch records, best epoch (:func:`.selection.select_best`), effective
label-noise rate and machines, all read through :mod:`..records`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import MIXING, Config
from ..records import (
    CONFIG,
    machine_label,
    read_config,
    read_environments,
    read_metrics,
    read_noise_summary,
)
from ..rundir import is_run_dir
from .selection import select_best


@dataclass
class RunResult:
    path: str
    cfg: Config
    history: list[dict]
    best: dict | None
    effective_flip_rate: float | None = None
    #: the machines it ran on (:func:`..records.machine_label`; two if resumed elsewhere)
    machines: tuple[str, ...] = ()
    label: str = field(init=False)

    def __post_init__(self):
        self.label = self.cfg.loss_spec.label()

    @property
    def complete(self) -> bool:
        return len(self.history) >= self.cfg.epochs


def find_runs(paths: list[str]) -> list[str]:
    """Run directories among ``paths`` and, for a path that is not a run, its sub-directories."""
    runs = []
    for path in paths:
        if not os.path.isdir(path):
            raise ValueError(f"{path} is not a directory")
        if is_run_dir(path):
            runs.append(path)
            continue
        found = sorted(
            os.path.join(path, d) for d in os.listdir(path) if is_run_dir(os.path.join(path, d))
        )
        if not found:
            raise ValueError(
                f"{path} is not a smoothtopk run directory (no {CONFIG}) nor holds any"
            )
        runs.extend(found)
    return runs


def load_run(path: str) -> RunResult:
    history = read_metrics(path)
    noise = read_noise_summary(path) or {}
    machines = tuple(dict.fromkeys(machine_label(env) for env in read_environments(path)))
    return RunResult(path, read_config(path), history, select_best(history),
                     noise.get("effective_flip_rate"), machines)  # fmt: skip


#: the recipe options that a label names when the runs of one loss differ in them
RECIPE = ("lr", "weight_decay", *MIXING)


def label_recipes(runs: list[RunResult]) -> None:
    """Add ``lr=...``/``weight_decay=...``/``mixup=...``/``cutmix=...`` to the labels of a loss
    whose runs differ in them (a sweep's grid, runs of two recipes), so that the results table
    never averages two learning rates or two recipes as seeds."""
    for label in dict.fromkeys(r.label for r in runs):
        mine = [r for r in runs if r.label == label]
        varied = [o for o in RECIPE if len({getattr(r.cfg, o) for r in mine}) > 1]
        for run in mine:
            if varied:
                extra = ", ".join(f"{o}={getattr(run.cfg, o):g}" for o in varied)
                run.label = f"{label} [{extra}]"
