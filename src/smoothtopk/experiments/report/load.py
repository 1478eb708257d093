"""Loading finished (or running) runs for a report: the run directories among the paths given,
and each run's config, epoch records, best epoch (:func:`.selection.select_best`), effective
label-noise rate and machines, all read through :mod:`..records`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import MIXING, Config, from_saved
from ..records import (
    CONFIG,
    archive_entry,
    is_archive,
    machine_label,
    read_archive,
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


def load_runs(paths: list[str]) -> list[RunResult]:
    """The runs of ``paths``: run directories, directories holding runs (:func:`find_runs`) and
    run archives (:func:`..records.write_archive`), in the order given."""
    runs = []
    for path in paths:
        if is_archive(path):
            runs.extend(_archived(path, entry) for entry in read_archive(path))
        else:
            runs.extend(load_run(run_dir) for run_dir in find_runs([path]))
    return runs


def archive_entries(paths: list[str]) -> list[dict]:
    """The run-archive entries (:func:`..records.archive_entry`) of the runs of ``paths``
    (directories and archives, as :func:`load_runs`)."""
    entries = []
    for path in paths:
        if is_archive(path):
            entries.extend(read_archive(path))
        else:
            entries.extend(archive_entry(run_dir) for run_dir in find_runs([path]))
    return entries


def _archived(file: str, entry: dict) -> RunResult:
    """A run of an archive, as :func:`load_run` reads one from its directory."""
    try:
        cfg = from_saved(entry["config"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{file}: run {entry['name']}: {err}") from None
    return _result(f"{file}:{entry['name']}", cfg, entry["metrics"], entry.get("noise"),
                   entry.get("environments") or [])  # fmt: skip


def _result(path, cfg, history, noise, environments) -> RunResult:
    machines = tuple(dict.fromkeys(machine_label(env) for env in environments))
    return RunResult(path, cfg, history, select_best(history),
                     (noise or {}).get("effective_flip_rate"), machines)  # fmt: skip


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
    return _result(path, read_config(path), read_metrics(path), read_noise_summary(path),
                   read_environments(path))  # fmt: skip


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
