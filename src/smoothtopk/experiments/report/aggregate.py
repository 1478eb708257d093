"""Aggregation: what a report's rows run along (:func:`axis_of`, :data:`AXES`) and the rows
themselves, mean and sample standard deviation over seeds in percent: the results
(:func:`aggregate`), the long-tailed protocol (:func:`long_tail_rows`), the per-loss
selection with its paired differences to CE (:func:`selection_rows`), test top-k against k
(:func:`topk_rows`) and training accuracy against epochs (:func:`training_rows`). The tables
and plots (:mod:`.tables`, :mod:`.plots`) only format these rows."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass

from ..config import Config
from ..losses import loss_params
from ..records import EVAL_KS
from .load import RunResult
from .selection import (
    best_by,
    candidates,
    has_choices,
    loss_group,
    select_best,
    select_runs,
    varied,
)


@dataclass(frozen=True)
class Axis:
    """What a report's rows run along: a config field, how its values sort, print and plot."""

    name: str  #: the config field (and the rows' key)
    title: str  #: the plots' x label
    categorical: bool  #: plotted at equal spacing, one tick per value

    def key(self, value) -> float:
        """The sort key of a value (``subset``: ``"all"`` last; imbalance ``None``: 1)."""
        if self.name == "subset":
            return subset_key(value)
        if self.name == "imbalance_ratio":
            return 1.0 if value is None else value
        return value

    def text(self, value) -> str:
        """A value as the tables show it: ``0.2``, ``1000``, ``10`` (``none``: balanced)."""
        if self.name == "subset":
            return str(value)
        return "none" if value is None else f"{value:g}"


#: the axes a report knows, in the order :func:`axis_of` tries them
AXES = {
    "subset": Axis("subset", "training subset", True),
    "imbalance_ratio": Axis("imbalance_ratio", "imbalance ratio R", True),
    "noise": Axis("noise", "label noise level p", False),
}


def axis_of(runs: list[RunResult]) -> str:
    """``subset`` when the runs differ in training subset, else ``imbalance_ratio`` when they
    differ in imbalance ratio and not in noise, else ``noise`` (the rule of every table and
    plot; the value's :class:`Axis` is ``AXES[axis]``)."""
    if len({r.cfg.subset for r in runs}) > 1:
        return "subset"
    if len({r.cfg.imbalance_ratio for r in runs}) > 1 and len({r.cfg.noise for r in runs}) == 1:
        return "imbalance_ratio"
    return "noise"


def natural_key(text: str) -> tuple:
    """The sort key of a label with numbers in it, the numbers by value: ``embedded g3`` before
    ``embedded g10``, ``lookalike_group_size=3`` before ``lookalike_group_size=10``.

    Example:
        >>> sorted(["a=10", "a=3", "b"], key=natural_key)
        ['a=3', 'a=10', 'b']
    """
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


def subset_key(value: str) -> float:
    """The sort key of a training subset: its size, ``64k`` = 64000, ``all`` last."""
    if value == "all":
        return float("inf")
    text = value.lower()
    return float(text[:-1]) * 1000 if text.endswith("k") else float(text)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def data_label(cfg: Config, axis: str = "noise") -> str:
    """The data set of a run as the tables show it: ``embedded``, or ``embedded LT10`` for the
    long-tailed protocol with imbalance ratio 10 (unless the ratio is the ``axis``), ``embedded
    g3`` for look-alike groups of 3 (:attr:`..config.Config.regrouped`)."""
    label = cfg.dataset + (f" g{cfg.lookalike_group_size}" if cfg.regrouped else "")
    if not cfg.long_tailed or axis == "imbalance_ratio":
        return label
    return f"{label} LT{cfg.imbalance_ratio:g}"


def aggregate(runs: list[RunResult]) -> tuple[str, list[dict]]:
    """One row per (data set, loss, x) with mean test top-1/top-5 over seeds, in percent."""
    axis = axis_of(runs)
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for run in runs:
        if run.best is None:
            continue
        groups[(data_label(run.cfg, axis), run.label, getattr(run.cfg, axis))].append(run)
    rows = []
    for (dataset, label, x), members in groups.items():
        stats = {}
        for metric in ("test_top1", "test_top5", "val_top5"):
            mean, std = mean_std([100 * r.best[metric] for r in members])
            stats[metric], stats[f"{metric}_std"] = mean, std
        rows.append(
            {
                "dataset": dataset,
                "loss": label,
                axis: x,
                "n": len(members),
                "imbalance_ratio": members[0].cfg.imbalance_ratio,
                **stats,
                "best_epoch": ";".join(str(r.best["epoch"]) for r in members),
                "complete": all(r.complete for r in members),
                "runs": ";".join(r.path for r in members),
            }
        )
    rows.sort(key=lambda r: (natural_key(r["dataset"]), AXES[axis].key(r[axis]), r["loss"]))
    return axis, rows


#: the columns of the long-tailed table: (field of the best epoch's record, header)
LONG_TAIL_COLUMNS = (
    ("test_top1", "top-1"), ("test_top5", "top-5"), ("test_macro_top1", "macro top-1"),
    ("test_macro_top5", "macro top-5"), ("test_head_top5", "head top-5"),
    ("test_medium_top5", "medium top-5"), ("test_tail_top5", "tail top-5"),
)  # fmt: skip


def long_tail_rows(runs: list[RunResult]) -> list[dict]:
    """One row per (data set, imbalance ratio, noise, subset, loss) over the runs whose best
    epoch has macro metrics: mean and std over seeds (%) of :data:`LONG_TAIL_COLUMNS`, the
    means of the values present (a balanced run has no head/medium/tail)."""
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for run in runs:
        if run.best is not None and run.best.get("test_macro_top5") is not None:
            c = run.cfg
            groups[(c.dataset, c.imbalance_ratio, c.noise, c.subset, run.label)].append(run)
    rows = []
    for (dataset, ratio, noise, subset, label), members in groups.items():
        row = {"dataset": dataset, "imbalance_ratio": ratio, "noise": noise, "subset": subset,
               "loss": label, "n": len(members)}  # fmt: skip
        for key, _ in LONG_TAIL_COLUMNS:
            values = [100 * r.best[key] for r in members if r.best.get(key) is not None]
            row[key] = mean_std(values) if values else None
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], r["imbalance_ratio"] or 0, r["noise"],
                             subset_key(r["subset"]), r["loss"]))  # fmt: skip
    return rows


def _options_text(cfg: Config, options: list[str]) -> str:
    return ", ".join(f"{o}={getattr(cfg, o):g}" for o in options) or "-"


#: two-sided 95 % quantiles of Student's t with 1 ... 30 degrees of freedom
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
CLEAR, NOISE, ONE_SEED = "clear", "within seed noise", "one seed"


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` >= 1 degrees of freedom (a table to 30,
    then the normal quantile with two Cornish-Fisher terms, within 0.001)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_interval(diffs: list[float]) -> dict:
    """The paired difference over seeds: mean, 95 % t-interval and verdict.

    With n seeds' differences d_i (loss minus CE at one seed: same draws, same data), mean d̄,
    sample standard deviation s: ``d̄ ± t_{0.975, n-1} · s / √n``. The verdict is ``clear``
    when the interval excludes 0, ``within seed noise`` when it holds 0, ``one seed`` (no
    interval) for a single pair.

    Example:
        >>> r = paired_interval([20.0, 5.0])
        >>> round(r["low"], 1), round(r["high"], 1), r["verdict"]
        (-82.8, 107.8, 'within seed noise')
        >>> paired_interval([3.0, 4.0, 5.0])["verdict"], paired_interval([3.0])["verdict"]
        ('clear', 'one seed')
    """
    mean, std = mean_std(diffs)
    n = len(diffs)
    if n < 2:
        return {"mean": mean, "std": None, "low": None, "high": None, "verdict": ONE_SEED}
    half = t975(n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = CLEAR if low > 0 or high < 0 else NOISE
    return {"mean": mean, "std": std, "low": low, "high": high, "verdict": verdict}


def _paired(picked: dict, ce: dict, metric: str, record=best_by, name: str | None = None) -> dict:
    """Over the seeds both have (with ``metric`` in the epoch ``record`` gives): the mean, std,
    95 % interval and verdict (:func:`paired_interval`) of 100 * (loss - CE) on it, under the
    keys ``diff_<name>...`` (``name``: ``metric``)."""
    key = f"diff_{name or metric}"
    both = [s for s in sorted(picked) if s in ce]
    seeds = [s for s in both if _has(record(picked[s]), metric) and _has(record(ce[s]), metric)]
    diffs = [100 * (record(picked[s])[metric] - record(ce[s])[metric]) for s in seeds]
    if not diffs:
        return {key: None, f"{key}_std": None, f"{key}_seeds": [], f"{key}_low": None,
                f"{key}_high": None, f"{key}_verdict": ""}  # fmt: skip
    ci = paired_interval(diffs)
    return {key: ci["mean"], f"{key}_std": ci["std"], f"{key}_seeds": diffs,
            f"{key}_low": ci["low"], f"{key}_high": ci["high"], f"{key}_verdict": ci["verdict"],
            "pairs": len(diffs)}  # fmt: skip


def _has(record: dict | None, metric: str) -> bool:
    return record is not None and record.get(metric) is not None


def final_record(run) -> dict | None:
    """The record of a run's last epoch (``None`` before its first)."""
    return run.history[-1] if run.history else None


#: the metrics reported at the final epoch too (keys ``final_<metric>``, ``diff_final_...``)
FINAL_METRICS = ("test_top1", "test_top5")


#: the long-tailed metrics of a selection row (of long-tailed runs: the long-tailed table's
#: columns after micro top-1/top-5), and those of them paired with CE
LONG_TAIL_METRICS = tuple(key for key, _ in LONG_TAIL_COLUMNS[2:])
LONG_TAIL_PAIRED = ("test_macro_top5", "test_tail_top5")


def _selection_stats(picked: dict[int, RunResult], ce: dict[int, RunResult],
                     by: str = "val_top5") -> dict:  # fmt: skip
    """Mean ± std over seeds (%) of the selected runs' metrics at their best epoch by ``by``
    (the long-tailed ones when every selected run is long-tailed: ``long_tailed``) and of
    :data:`FINAL_METRICS` at their final epoch (``final_<metric>``), and the paired
    differences to CE's selected runs ``ce`` at both ends (none for CE itself: ``ce`` empty;
    the long-tailed ones when CE's are too)."""
    seeds = sorted(picked)
    long_tail = all(picked[s].cfg.long_tailed for s in seeds)
    stats: dict = {"pairs": 0, "long_tailed": long_tail}
    best = partial_best(by)
    for metric in ("val_top1", "val_top5", "test_top1", "test_top5", *LONG_TAIL_METRICS):
        values = [100 * best(picked[s])[metric] for s in seeds if _has(best(picked[s]), metric)]
        shown = values and (long_tail or metric not in LONG_TAIL_METRICS)
        stats[metric], stats[f"{metric}_std"] = mean_std(values) if shown else (None, None)
    for metric in FINAL_METRICS:
        values = [100 * final_record(picked[s])[metric] for s in seeds
                  if _has(final_record(picked[s]), metric)]  # fmt: skip
        key = f"final_{metric}"
        stats[key], stats[f"{key}_std"] = mean_std(values) if values else (None, None)
    ce_long_tail = long_tail and all(r.cfg.long_tailed for r in ce.values())
    for metric in ("test_top1", "test_top5", *LONG_TAIL_PAIRED):
        if metric in LONG_TAIL_PAIRED and not ce_long_tail:
            stats.update(_paired({}, {}, metric))
            continue
        stats.update(_paired(picked, ce, metric, best))
    pairs = stats["pairs"]
    for metric in FINAL_METRICS:
        stats.update(_paired(picked, ce, metric, final_record, f"final_{metric}"))
    stats["pairs"] = pairs
    return stats


def partial_best(by: str):
    """The record of a run's best epoch under rule ``by`` (:func:`.selection.best_by`)."""
    return lambda run: best_by(run, by)


def selection_rows(runs: list[RunResult], by: str = "val_top5") -> tuple[str, list[dict]]:
    """One row per (loss group, setting) under the selection rule ``by`` (validation top-5 or
    top-1, :data:`.selection.RULES`): the selected options per seed, test top-1/top-5 of the
    selected runs at their best and at their final epoch (mean ± std over seeds, %;
    long-tailed runs also macro top-1/top-5 and the thirds' top-5) and the paired difference
    to CE with its 95 % interval and verdict (:func:`paired_interval`)."""
    axis, options = axis_of(runs), varied(runs)
    cells: dict[tuple, dict[int, RunResult]] = defaultdict(dict)
    pool = candidates(runs)
    counts = {key: len(m) for key, m in pool.items()}
    for (group, setting, seed), run in select_runs(runs, by).items():
        cells[(group, setting)][seed] = run
    shown = _setting_columns(list({s for _, s in cells}), axis)
    rows = []
    for (group, setting), picked in cells.items():
        seeds = sorted(picked)
        ce = cells.get(("ce", setting), {}) if group != "ce" else {}
        cfg = picked[seeds[0]].cfg
        rows.append({
            "dataset": data_label(cfg, axis), "loss": group, axis: getattr(cfg, axis),
            "setting": ", ".join(f"{k}={json.loads(v)}" for k, v in setting if k in shown),
            "n": len(seeds), "selected_by": by, **_selection_stats(picked, ce, by),
            "selected": "; ".join(f"seed {s}: {_options_text(picked[s].cfg, options[group])}"
                                  for s in seeds),
            "candidates": ";".join(str(counts[(group, setting, s)]) for s in seeds),
            "edges": grid_edges(picked, [r for s in seeds for r in pool[(group, setting, s)]],
                                options[group]),
            "complete": all(picked[s].complete for s in seeds),
            "runs": ";".join(picked[s].path for s in seeds),
        })  # fmt: skip
    key = AXES[axis].key
    rows.sort(key=lambda r: (natural_key(r["setting"]), key(r[axis]), r["loss"] != "ce",
                             natural_key(r["loss"])))  # fmt: skip
    return axis, rows


def grid_edges(picked: dict[int, RunResult], pool: list[RunResult], options: list[str]) -> list:
    """The selected values that lie on an edge of their grid: for each swept option (learning
    rate, tau, ...: the candidates ``pool`` differ in it) whose selected value at some seed is
    the smallest or the largest of the candidates' values, ``(option, value, "lowest" or
    "highest", grid, seeds)``. A grid of two values has only edges; each is still named."""
    found = []
    for option in options:
        grid = sorted({getattr(r.cfg, option) for r in pool if getattr(r.cfg, option) is not None})
        if len(grid) < 2:
            continue
        for value, side in ((grid[0], "lowest"), (grid[-1], "highest")):
            seeds = [s for s in sorted(picked) if getattr(picked[s].cfg, option) == value]
            if seeds:
                found.append((option, value, side, grid, seeds))
    return found


def _setting_columns(settings: list[tuple], axis: str) -> set[str]:
    """The options, other than ``axis``, in which the settings differ (shown in the table)."""
    seen: dict[str, set] = defaultdict(set)
    for setting in settings:
        for k, v in setting:
            seen[k].add(v)
    return {k for k, v in seen.items() if len(v) > 1 and k not in (axis, "noise", "subset")}


# -- the k study: test top-k against k ------------------------------------------------------------


def topk_of(record: dict | None) -> tuple[int, ...]:
    """The k of :data:`..records.EVAL_KS` whose test accuracy ``record`` holds (none in an
    epoch recorded before evaluation measured them all)."""
    if record is None:
        return ()
    return tuple(k for k in EVAL_KS if record.get(f"test_top{k}") is not None)


def best_topk(run: RunResult, k: int) -> dict | None:
    """The record of the epoch with the best validation top-``k`` among those that hold it
    (ties to the earliest: :func:`.selection.select_best`)."""
    return select_best([h for h in run.history if h.get(f"val_top{k}") is not None],
                       f"val_top{k}")  # fmt: skip


def _loss_order(run: RunResult) -> tuple:
    """CE first, then by loss name, k and label (``L_{2,1}`` before ``L_{10,1}``)."""
    cfg = run.cfg
    return cfg.loss != "ce", cfg.loss, cfg.k if "k" in loss_params(cfg.loss) else 0, run.label


def topk_rows(runs: list[RunResult]) -> list[dict]:
    """One row per (data set, noise, subset, loss) over the runs whose last epoch holds top-1
    ... top-10: test top-k (%, mean and std over seeds) for each k at the final epoch
    (``final``: k -> (mean, std)) and at the epoch of the best validation top-k (``best``)."""
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for run in runs:
        if set(topk_of(final_record(run))) - {1, 5}:  # not a run recorded with top-1/5 only
            c = run.cfg
            groups[(data_label(c), c.noise, c.subset, run.label)].append(run)
    rows = []
    for (dataset, noise, subset, label), members in groups.items():
        ks = sorted(set.intersection(*(set(topk_of(final_record(r))) for r in members)))
        row = {"dataset": dataset, "noise": noise, "subset": subset, "loss": label,
               "n": len(members), "ks": ks, "order": _loss_order(members[0])}  # fmt: skip
        for name, record in (("final", lambda r, k: final_record(r)), ("best", best_topk)):
            row[name] = {k: mean_std([100 * record(r, k)[f"test_top{k}"] for r in members])
                         for k in ks}  # fmt: skip
        rows.append(row)
    rows.sort(key=lambda r: (natural_key(r["dataset"]), r["noise"], subset_key(r["subset"]),
                             r["order"]))  # fmt: skip
    return rows


# -- training accuracy against epochs -------------------------------------------------------------


def training_runs(runs: list[RunResult]) -> dict[int, tuple[RunResult, str]]:
    """The runs whose training accuracy the report draws, each with its curve's name: those
    selected by validation top-5 (named by loss group, :func:`.selection.loss_group`) when some
    loss has a grid, else every run with an epoch (named by its label)."""
    if has_choices(runs):
        return {id(r): (r, loss_group(r.cfg)) for r in select_runs(runs).values()}
    return {id(r): (r, r.label) for r in runs if r.history}


def training_rows(runs: list[RunResult]) -> tuple[str, list[dict]]:
    """The report's axis and one row per (data set, axis value, loss) of :func:`training_runs`:
    per epoch, training top-1/top-5 on the labels trained on (noisy ones under label noise), %,
    the mean over seeds (``epochs``, ``train_top1``, ``train_top5``; ``n`` seeds)."""
    axis = axis_of(runs)
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for run, name in training_runs(runs).values():
        groups[(data_label(run.cfg, axis), getattr(run.cfg, axis), name)].append(run)
    rows = []
    for (dataset, x, name), members in groups.items():
        epochs = sorted({h["epoch"] for r in members for h in r.history})
        row = {"dataset": dataset, axis: x, "loss": name, "n": len(members), "epochs": epochs,
               "order": _loss_order(members[0])}  # fmt: skip
        for metric in ("train_top1", "train_top5"):
            row[metric] = [mean_std([100 * h[metric] for r in members for h in r.history
                                     if h["epoch"] == e])[0] for e in epochs]  # fmt: skip
        rows.append(row)
    rows.sort(key=lambda r: (natural_key(r["dataset"]), AXES[axis].key(r[axis]), r["order"]))
    return axis, rows
