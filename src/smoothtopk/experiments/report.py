"""``smoothtopk report``: a markdown table, a CSV and PNG plots from finished runs.

Everything is read from the run directories (``config.yaml``, ``metrics.jsonl``,
``noise.json``); the reported epoch of each run is the one with the best validation top-5
(ties: the earliest), and the table shows its *test* top-1/top-5. Runs with the same data set,
loss and noise level (or subset size) but different seeds are averaged (column ``n``): the
tables give mean ± sample standard deviation over seeds, the accuracy plot error bars of one
standard deviation. Long-tailed runs (``--imbalance-ratio R``) count as their own data set
(``embedded LT10``), and when runs carry the per-class metrics of the long-tailed protocol a
second table (``long_tail.md``, :func:`long_tail_table`) shows micro and macro top-1/top-5 and
the macro top-5 of the head, medium and tail thirds of the classes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

from . import loss_options
from .checkpoint import atomic_write_bytes, atomic_write_text
from .config import Config
from .losses import loss_params
from .records import machine_label, read_environments, read_metrics
from .rundir import CONFIG, RESUMABLE, is_run_dir, saved_config


@dataclass
class RunResult:
    path: str
    cfg: Config
    history: list[dict]
    best: dict | None
    effective_flip_rate: float | None = None
    #: the machines it ran on (:func:`records.machine_label`; two if resumed elsewhere)
    machines: tuple[str, ...] = ()
    label: str = field(init=False)

    def __post_init__(self):
        c = self.cfg
        self.label = c.loss_spec.label()

    @property
    def complete(self) -> bool:
        return len(self.history) >= self.cfg.epochs


def select_best(history: list[dict]) -> dict | None:
    best = None
    for row in history:
        if best is None or row["val_top5"] > best["val_top5"]:
            best = row
    return best


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
    cfg = saved_config(path)
    history = read_metrics(path)
    rate = None
    noise_file = os.path.join(path, "noise.json")
    if os.path.exists(noise_file):
        with open(noise_file) as f:
            rate = json.load(f).get("effective_flip_rate")
    machines = tuple(dict.fromkeys(machine_label(env) for env in read_environments(path)))
    return RunResult(path, cfg, history, select_best(history), rate, machines)


def machines_note(runs: list[RunResult]) -> str:
    """A line under the table naming the machine the runs come from or, when they come from
    several, saying so with each machine's number of runs (their last digits may differ: the
    same configuration is bitwise reproducible on one machine only). Empty without records.

    Example:
        >>> from types import SimpleNamespace as Run
        >>> runs = [Run(machines=("A",)), Run(machines=("B",)), Run(machines=())]
        >>> print(machines_note(runs), end="")
        Note: runs from 2 machines (not bitwise comparable): A (1 run); B (1 run); 1 run unknown.
    """
    counts: dict[str, int] = {}
    for run in runs:
        for label in run.machines:
            counts[label] = counts.get(label, 0) + 1
    unknown = sum(1 for run in runs if not run.machines)
    if not counts:
        return ""
    if len(counts) == 1 and not unknown:
        return f"Machine: {next(iter(counts))}.\n"
    parts = [f"{label} ({n} run{'s' * (n != 1)})" for label, n in counts.items()]
    if unknown:
        parts.append(f"{unknown} run{'s' * (unknown != 1)} unknown")
    machines = f"{len(counts)} machine{'s' * (len(counts) != 1)}"
    return f"Note: runs from {machines} (not bitwise comparable): {'; '.join(parts)}.\n"


@dataclass(frozen=True)
class Axis:
    """What a report's rows run along: a config field, how its values sort, print and plot."""

    name: str  #: the config field (and the rows' key)
    title: str  #: the plots' x label
    categorical: bool  #: plotted at equal spacing, one tick per value

    def key(self, value) -> float:
        """The sort key of a value (``subset``: ``"all"`` last; imbalance ``None``: 1)."""
        if self.name == "subset":
            return _subset_key(value)
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


def _subset_key(value: str) -> float:
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
    long-tailed protocol with imbalance ratio 10 (unless the ratio is the ``axis``)."""
    if cfg.imbalance_ratio is None or axis == "imbalance_ratio":
        return cfg.dataset
    return f"{cfg.dataset} LT{cfg.imbalance_ratio:g}"


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
    rows.sort(key=lambda r: (r["dataset"], AXES[axis].key(r[axis]), r["loss"]))
    return axis, rows


def markdown_table(axis: str, rows: list[dict]) -> str:
    """Rows: noise levels (or subset sizes); columns: test top-1 and top-5 (%) per loss, as
    ``mean ± std (n=seeds)`` when some cell averages several seeds."""
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    key = AXES[axis].key
    xs = sorted(
        dict.fromkeys((r["dataset"], r[axis]) for r in rows), key=lambda t: (t[0], key(t[1]))
    )
    datasets = {d for d, _ in xs}
    many_seeds = any(r["n"] > 1 for r in rows)
    head = (["dataset"] if len(datasets) > 1 else []) + [axis]
    for loss in losses:
        head += [f"{loss} top-1", f"{loss} top-5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    index = {(r["dataset"], r[axis], r["loss"]): r for r in rows}
    for dataset, x in xs:
        cells = ([dataset] if len(datasets) > 1 else []) + [AXES[axis].text(x)]
        for loss in losses:
            r = index.get((dataset, x, loss))
            if r is None:
                cells += ["", ""]
                continue
            mark = "" if r["complete"] else "*"
            if many_seeds:
                top1 = f"{r['test_top1']:.1f} ± {r['test_top1_std']:.1f}{mark} (n={r['n']})"
                top5 = f"{r['test_top5']:.1f} ± {r['test_top5_std']:.1f}{mark}"
            else:
                top1, top5 = f"{r['test_top1']:.1f}{mark}", f"{r['test_top5']:.1f}{mark}"
            cells += [top1, top5]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if any(not r["complete"] for r in rows):
        text += "\n\\* run not finished: best epoch so far.\n"
    return text


def rows_csv(axis: str, rows: list[dict]) -> str:
    buffer = io.StringIO()
    metrics = ("test_top1", "test_top1_std", "test_top5", "test_top5_std", "val_top5",
               "val_top5_std")  # fmt: skip
    cols = ["dataset", "loss", axis, "n", *metrics, "best_epoch", "complete", "runs"]
    if axis != "imbalance_ratio":
        cols.insert(3, "imbalance_ratio")
    writer = csv.DictWriter(buffer, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        rounded = {m: f"{r[m]:.2f}" for m in metrics}
        writer.writerow({**r, **rounded})
    return buffer.getvalue()


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
                             _subset_key(r["subset"]), r["loss"]))  # fmt: skip
    return rows


def long_tail_table(rows: list[dict]) -> str:
    """The long-tailed table (markdown): test accuracies (%) at the best validation top-5
    epoch, ``mean ± std`` over seeds when some row has several; columns that do not vary
    (data set, noise, subset) are left out."""
    many = any(r["n"] > 1 for r in rows)
    varying = [c for c in ("dataset", "noise", "subset") if len({r[c] for r in rows}) > 1]
    head = [*varying, "imbalance R", "loss", *(h for _, h in LONG_TAIL_COLUMNS)]
    head += ["n"] if many else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = "none" if r["imbalance_ratio"] is None else f"{r['imbalance_ratio']:g}"
        cells = [f"{r[c]:g}" if c == "noise" else str(r[c]) for c in varying] + [ratio, r["loss"]]
        for key, _ in LONG_TAIL_COLUMNS:
            value = r[key]
            if value is None:
                cells.append("")
            else:
                cells.append(f"{value[0]:.1f} ± {value[1]:.1f}" if many else f"{value[0]:.1f}")
        lines.append("| " + " | ".join(cells + ([str(r["n"])] if many else [])) + " |")
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


#: the panels of the accuracy plots: (row field, title); the tail panel when rows have it
PANELS = (("test_top1", "top-1"), ("test_top5", "top-5"), ("test_tail_top5", "tail-third top-5"))


def plot_accuracy(axis: str, rows: list[dict]):
    """Test accuracy of ``rows`` (mean ± std over seeds) against ``axis``: one panel per metric
    of :data:`PANELS` the rows have, one line per (data set, loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(m, t) for m, t in PANELS if any(r.get(m) is not None for r in rows)]
    fig, panels = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    lines = list(dict.fromkeys((r["dataset"], r["loss"]) for r in rows))
    several = len({d for d, _ in lines}) > 1  # e.g. imbalance ratios: one line per data set
    ax = AXES[axis]
    values = sorted({r[axis] for r in rows}, key=ax.key)
    many = any(r["n"] > 1 for r in rows)
    for panel, (metric, title) in zip(panels[0], shown, strict=True):
        for dataset, loss in lines:
            mine = [r for r in rows if r["loss"] == loss and r["dataset"] == dataset
                    and r.get(metric) is not None]  # fmt: skip
            mine.sort(key=lambda r: ax.key(r[axis]))
            xs = [values.index(r[axis]) if ax.categorical else r[axis] for r in mine]
            errors = [r[f"{metric}_std"] for r in mine]
            panel.errorbar(xs, [r[metric] for r in mine], yerr=errors if any(errors) else None,
                           marker="o", capsize=3,
                           label=f"{loss}, {dataset}" if several else loss)  # fmt: skip
        if ax.categorical:
            panel.set_xticks(range(len(values)), [ax.text(v) for v in values])
        panel.set_xlabel(ax.title)
        panel.set_ylabel(f"test {title} accuracy (%)")
        panel.set_title(f"test {title} at the best validation top-5 epoch"
                        + ("\n(mean ± std over seeds)" if many else ""), fontsize=10)  # fmt: skip
        panel.grid(alpha=0.3)
    # One legend beside the panels, so that many losses hide no data.
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def plot_curves(runs: list[RunResult]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, 3, figsize=(15, 4))
    axis = AXES[axis_of(runs)]
    labels = list(dict.fromkeys(r.label for r in runs))
    styles = ["-", "--", ":", "-."]
    xs = sorted({getattr(r.cfg, axis.name) for r in runs}, key=axis.key)
    cmap = plt.get_cmap("viridis")
    for run in runs:
        if not run.history:
            continue
        x = getattr(run.cfg, axis.name)
        color = cmap(xs.index(x) / max(len(xs) - 1, 1))
        style = styles[labels.index(run.label) % len(styles)]
        epochs = [h["epoch"] for h in run.history]
        name = f"{run.label}, {axis.name} {axis.text(x)}"
        for panel, metric in zip(panels, ("train_loss", "val_top1", "val_top5"), strict=True):
            values = [h[metric] * (1 if metric == "train_loss" else 100) for h in run.history]
            panel.plot(epochs, values, style, color=color, label=name)
    for panel, title in zip(panels, ("training loss (noisy labels)", "validation top-1 (%)",
                                     "validation top-5 (%)"), strict=True):  # fmt: skip
        panel.set_xlabel("epoch")
        panel.set_title(title)
        panel.grid(alpha=0.3)
    panels[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def write_report(paths: list[str], out_dir: str, select: bool | None = None) -> dict:
    """Read the runs, then write ``results.md``, ``results.csv``, ``accuracy_vs_<axis>.png`` and
    ``training_curves.png`` (and ``long_tail.md`` for long-tailed runs) into ``out_dir``;
    returns the table and the paths. With ``select`` (``None``: when some loss has several
    configurations per setting and seed) also the selection files of :func:`write_selection`
    (``selection_table``, ``selection_rows``)."""
    runs = [load_run(p) for p in find_runs(paths)]
    label_recipes(runs)
    axis, rows = aggregate(runs)
    if not rows:
        raise ValueError("none of the runs has finished an epoch yet")
    table = markdown_table(axis, rows)
    tail_rows = long_tail_rows(runs)
    long_tail = any(r["test_head_top5"] is not None for r in tail_rows)
    if long_tail:  # the long-tailed protocol: micro, macro and per-third accuracies
        tail = long_tail_table(tail_rows)
        table += "\nLong-tailed protocol (test %, macro = mean over classes):\n\n" + tail
    note = machines_note(runs)
    table += f"\n{note}" if note else ""
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "table": os.path.join(out_dir, "results.md"),
        "csv": os.path.join(out_dir, "results.csv"),
        "accuracy_plot": os.path.join(out_dir, f"accuracy_vs_{axis}.png"),
        "curves_plot": os.path.join(out_dir, "training_curves.png"),
    }
    atomic_write_text(files["table"], table)
    atomic_write_text(files["csv"], rows_csv(axis, rows))
    atomic_write_bytes(files["accuracy_plot"], plot_accuracy(axis, rows))
    atomic_write_bytes(files["curves_plot"], plot_curves(runs))
    if long_tail:
        files["long_tail_table"] = os.path.join(out_dir, "long_tail.md")
        atomic_write_text(files["long_tail_table"], tail)
    result = {"table": table, "axis": axis, "rows": rows, "files": files,
              "machines": sorted({label for run in runs for label in run.machines})}  # fmt: skip
    if select or (select is None and has_choices(runs)):
        result.update(write_selection(runs, out_dir))
        files.update(result.pop("selection_files"))
    return result


def _smaller_options(run: RunResult) -> tuple:
    """The ties' order: the smaller options first (``None``, a loss's default, before any)."""
    values = (getattr(run.cfg, o) for o in SELECTABLE)
    return tuple((v is not None, 0.0 if v is None else v) for v in values)


def label_recipes(runs: list[RunResult]) -> None:
    """Add ``lr=...``/``weight_decay=...`` to the labels of a loss whose runs differ in them
    (a sweep's grid), so that the results table never averages two learning rates as seeds."""
    for label in dict.fromkeys(r.label for r in runs):
        mine = [r for r in runs if r.label == label]
        varied = [o for o in ("lr", "weight_decay") if len({getattr(r.cfg, o) for r in mine}) > 1]
        for run in mine:
            if varied:
                extra = ", ".join(f"{o}={getattr(run.cfg, o):g}" for o in varied)
                run.label = f"{label} [{extra}]"


# -- per-loss selection on clean validation --------------------------------------------------

#: options selected per loss by validation (a sweep's ``--grid``): the recipe's and the losses'
SELECTABLE = ("lr", "weight_decay", *loss_options.SELECTABLE)
_NOT_SETTING = {*SELECTABLE, *RESUMABLE, "preset", "seed", "loss", "k"}
SELECTION_NOTE = (
    "Per loss, setting and seed, the configuration with the best clean validation top-5 (at its "
    "best epoch; ties: validation top-1, then the smaller options) is selected; the test "
    "accuracy of that run at that epoch is reported, and never chooses anything. Δ: the "
    "per-seed paired difference to CE (selected the same way), mean ± std over seeds, in "
    "points, then each seed's difference in seed order.\n"
)


def loss_group(cfg: Config) -> str:
    """The loss a selection chooses options for: ``ce``, ``smooth-svm (k=5)``."""
    return f"{cfg.loss} (k={cfg.k})" if "k" in loss_params(cfg.loss) else cfg.loss


def setting_of(cfg: Config) -> tuple:
    """What the candidates of one choice share: every option that changes a result (data set,
    noise, subset, epochs, ...) except the loss, the :data:`SELECTABLE` options and the seed."""
    values = cfg.to_dict()
    return tuple((k, json.dumps(values[k], default=str)) for k in sorted(values)
                 if k not in _NOT_SETTING)  # fmt: skip


def _candidates(runs: list[RunResult]) -> dict[tuple, list[RunResult]]:
    """(loss group, setting, seed) -> the runs (with an epoch) that compete for it."""
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for run in runs:
        if run.best is not None:
            groups[(loss_group(run.cfg), setting_of(run.cfg), run.cfg.seed)].append(run)
    return groups


def has_choices(runs: list[RunResult]) -> bool:
    """Whether some loss has several configurations for one setting and seed."""
    return any(len(members) > 1 for members in _candidates(runs).values())


def select_runs(runs: list[RunResult]) -> dict[tuple, RunResult]:
    """(loss group, setting, seed) -> the selected run.

    Each run's own epoch is its best clean validation top-5 (:func:`select_best`); among the
    candidates, the run with the highest validation top-5 at that epoch wins, ties broken by
    validation top-1, then by the smaller :data:`SELECTABLE` options. No test metric is read.

    Example:
        >>> import dataclasses
        >>> run = lambda lr, v: RunResult("", Config(lr=lr), [], {"val_top5": v, "val_top1": 0})
        >>> picked = select_runs([run(0.1, 0.8), run(0.3, 0.9), run(0.03, 0.9)])
        >>> [r.cfg.lr for r in picked.values()]
        [0.03]
    """
    chosen = {}
    for key, members in _candidates(runs).items():
        ordered = sorted(members, key=_smaller_options)
        chosen[key] = max(ordered, key=lambda r: (r.best["val_top5"], r.best["val_top1"]))
    return chosen


def _varied(runs: list[RunResult]) -> dict[str, list[str]]:
    """Loss group -> the :data:`SELECTABLE` options its runs differ in (what was selected)."""
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for run in runs:
        for option in SELECTABLE:
            values[loss_group(run.cfg)][option].add(getattr(run.cfg, option))
    return {g: [o for o in SELECTABLE if len(v[o]) > 1] for g, v in values.items()}


def _options_text(cfg: Config, options: list[str]) -> str:
    return ", ".join(f"{o}={getattr(cfg, o):g}" for o in options) or "-"


def _paired(picked: dict[int, RunResult], ce: dict[int, RunResult], metric: str) -> dict:
    """Mean ± std over the seeds both have of 100 * (loss - CE) on ``metric``."""
    diffs = [100 * (picked[s].best[metric] - ce[s].best[metric]) for s in sorted(picked) if s in ce]
    if not diffs:
        return {f"diff_{metric}": None, f"diff_{metric}_std": None, f"diff_{metric}_seeds": []}
    mean, std = mean_std(diffs)
    return {f"diff_{metric}": mean, f"diff_{metric}_std": std, f"diff_{metric}_seeds": diffs,
            "pairs": len(diffs)}  # fmt: skip


#: the long-tailed metrics of a selection row (when every selected run has them: the long-tailed
#: table's columns after micro top-1/top-5), and those of them paired with CE
LONG_TAIL_METRICS = tuple(key for key, _ in LONG_TAIL_COLUMNS[2:])
LONG_TAIL_PAIRED = ("test_macro_top5", "test_tail_top5")


def _selection_stats(picked: dict[int, RunResult], ce: dict[int, RunResult]) -> dict:
    """Mean ± std over seeds (%) of the selected runs' metrics, and the paired differences to
    CE's selected runs ``ce`` (none for CE itself: ``ce`` empty)."""
    seeds = sorted(picked)
    long_tail = all(picked[s].best.get(m) is not None for s in seeds for m in LONG_TAIL_METRICS)
    stats: dict = {"pairs": 0}
    for metric in ("val_top5", "test_top1", "test_top5", *LONG_TAIL_METRICS):
        if metric in LONG_TAIL_METRICS and not long_tail:
            stats[metric] = stats[f"{metric}_std"] = None
            continue
        stats[metric], stats[f"{metric}_std"] = mean_std([100 * picked[s].best[metric]
                                                          for s in seeds])  # fmt: skip
    ce_long_tail = long_tail and all(r.best.get(m) is not None for r in ce.values()
                                     for m in LONG_TAIL_PAIRED)  # fmt: skip
    for metric in ("test_top1", "test_top5", *LONG_TAIL_PAIRED):
        if metric in LONG_TAIL_PAIRED and not ce_long_tail:
            stats[f"diff_{metric}"] = stats[f"diff_{metric}_std"] = None
            stats[f"diff_{metric}_seeds"] = []
            continue
        stats.update(_paired(picked, ce, metric))
    return stats


def selection_rows(runs: list[RunResult]) -> tuple[str, list[dict]]:
    """One row per (loss group, setting): the selected options per seed, test top-1/top-5 of
    the selected runs (mean ± std over seeds, %; long-tailed runs also macro top-1/top-5 and
    the thirds' top-5) and the paired difference to CE."""
    axis, varied = axis_of(runs), _varied(runs)
    cells: dict[tuple, dict[int, RunResult]] = defaultdict(dict)
    counts = {key: len(m) for key, m in _candidates(runs).items()}
    for (group, setting, seed), run in select_runs(runs).items():
        cells[(group, setting)][seed] = run
    shown = _setting_columns(list({s for _, s in cells}), axis)
    rows = []
    for (group, setting), picked in cells.items():
        seeds = sorted(picked)
        ce = cells.get(("ce", setting), {}) if group != "ce" else {}
        cfg = picked[seeds[0]].cfg
        rows.append({
            "dataset": cfg.dataset, "loss": group, axis: getattr(cfg, axis),
            "setting": ", ".join(f"{k}={json.loads(v)}" for k, v in setting if k in shown),
            "n": len(seeds), **_selection_stats(picked, ce),
            "selected": "; ".join(f"seed {s}: {_options_text(picked[s].cfg, varied[group])}"
                                  for s in seeds),
            "candidates": ";".join(str(counts[(group, setting, s)]) for s in seeds),
            "complete": all(picked[s].complete for s in seeds),
            "runs": ";".join(picked[s].path for s in seeds),
        })  # fmt: skip
    key = AXES[axis].key
    rows.sort(key=lambda r: (r["setting"], key(r[axis]), r["loss"] != "ce", r["loss"]))
    return axis, rows


def _setting_columns(settings: list[tuple], axis: str) -> set[str]:
    """The options, other than ``axis``, in which the settings differ (shown in the table)."""
    seen: dict[str, set] = defaultdict(set)
    for setting in settings:
        for k, v in setting:
            seen[k].add(v)
    return {k for k, v in seen.items() if len(v) > 1 and k not in (axis, "noise", "subset")}


def _pm(mean, std, signed: bool = False) -> str:
    if mean is None:
        return ""
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"


def _delta(r: dict, metric: str) -> str:
    """A paired-difference cell: ``+4.7 ± 1.7 (+3.1, +6.5, +4.5)``, the seeds' values last."""
    if r[f"diff_{metric}"] is None:
        return ""
    seeds = ", ".join(f"{d:+.1f}" for d in r[f"diff_{metric}_seeds"])
    return f"{_pm(r[f'diff_{metric}'], r[f'diff_{metric}_std'], True)} ({seeds})"


_HEADERS = dict(LONG_TAIL_COLUMNS)
#: the long-tailed headers of the selection table
SELECTION_LONG_TAIL = (*(_HEADERS[m] for m in LONG_TAIL_METRICS),
                       *(f"Δ {_HEADERS[m]} vs CE" for m in LONG_TAIL_PAIRED))  # fmt: skip


def _long_tail_cells(r: dict) -> list[str]:
    return [_pm(r[m], r[f"{m}_std"]) for m in LONG_TAIL_METRICS] + [
        _delta(r, m) for m in LONG_TAIL_PAIRED
    ]


def selection_table(axis: str, rows: list[dict]) -> str:
    """The markdown selection table: one row per loss and noise level (or subset, or
    imbalance ratio); long-tailed rows add macro, per-third and their paired columns."""
    setting = any(r["setting"] for r in rows)
    long_tail = any(r.get("test_macro_top5") is not None for r in rows)
    head = (["setting"] if setting else []) + [axis, "loss", "selected (per seed)", "n",
            "val top-5", "test top-1", "test top-5", "Δ top-1 vs CE", "Δ top-5 vs CE"]  # fmt: skip
    head += list(SELECTION_LONG_TAIL) if long_tail else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = "" if r["complete"] else "*"
        cells = ([r["setting"]] if setting else []) + [AXES[axis].text(r[axis]), r["loss"],
                                                        r["selected"], str(r["n"])]  # fmt: skip
        cells += [_pm(r["val_top5"], r["val_top5_std"]),
                  _pm(r["test_top1"], r["test_top1_std"]) + mark,
                  _pm(r["test_top5"], r["test_top5_std"]) + mark,
                  _delta(r, "test_top1"), _delta(r, "test_top5")]  # fmt: skip
        cells += _long_tail_cells(r) if long_tail else []
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\n" + SELECTION_NOTE
    if long_tail:
        text += ("\nmacro: the mean over classes; head / medium / tail: the macro top-5 of the "
                 "thirds of the classes by training count.\n")  # fmt: skip
    if any(not r["complete"] for r in rows):
        text += "\n\\* run not finished: best epoch so far.\n"
    return text


SELECTION_COLUMNS = ("val_top5", "val_top5_std", "test_top1", "test_top1_std", "test_top5",
                     "test_top5_std", "diff_test_top1", "diff_test_top1_std", "diff_test_top5",
                     "diff_test_top5_std",
                     *(f"{m}{s}" for m in LONG_TAIL_METRICS for s in ("", "_std")),
                     *(f"diff_{m}{s}" for m in LONG_TAIL_PAIRED for s in ("", "_std")))  # fmt: skip


def selection_csv(axis: str, rows: list[dict]) -> str:
    buffer = io.StringIO()
    per_seed = [f"diff_{m}_seeds" for m in ("test_top1", "test_top5", *LONG_TAIL_PAIRED)]
    cols = ["setting", "dataset", "loss", axis, "n", "selected", "candidates",
            *SELECTION_COLUMNS, *per_seed, "pairs", "complete", "runs"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{m: "" if r[m] is None else f"{r[m]:.2f}"
                                 for m in SELECTION_COLUMNS},
                         **{c: ";".join(f"{d:.2f}" for d in r[c]) for c in per_seed}})  # fmt: skip
    return buffer.getvalue()


def candidates_csv(runs: list[RunResult]) -> str:
    """Every candidate run with what it was judged by (validation) and its test accuracy (%)."""
    chosen = {id(r) for r in select_runs(runs).values()}
    buffer = io.StringIO()
    cols = ["loss", "noise", "subset", "imbalance_ratio", "seed", *SELECTABLE, "best_epoch",
            "val_top1", "val_top5", "test_top1", "test_top5", "selected", "run"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=cols)
    writer.writeheader()
    for members in _candidates(runs).values():
        for r in members:
            writer.writerow({
                "loss": loss_group(r.cfg), "noise": r.cfg.noise, "subset": r.cfg.subset,
                "imbalance_ratio": r.cfg.imbalance_ratio, "seed": r.cfg.seed,
                **{o: getattr(r.cfg, o) for o in SELECTABLE},
                "best_epoch": r.best["epoch"],
                **{m: f"{100 * r.best[m]:.2f}" for m in ("val_top1", "val_top5", "test_top1",
                                                         "test_top5")},
                "selected": id(r) in chosen, "run": r.path,
            })  # fmt: skip
    return buffer.getvalue()


def write_selection(runs: list[RunResult], out_dir: str) -> dict:
    """Write ``selection.md``, ``selection.csv``, ``selection_candidates.csv`` and
    ``selection_vs_<axis>.png`` (test accuracy of the selected configurations) into
    ``out_dir``; returns ``selection_table``, ``selection_rows`` and ``selection_files``."""
    axis, rows = selection_rows(runs)
    table = selection_table(axis, rows)
    files = {
        "selection_table": os.path.join(out_dir, "selection.md"),
        "selection_csv": os.path.join(out_dir, "selection.csv"),
        "selection_candidates": os.path.join(out_dir, "selection_candidates.csv"),
        "selection_plot": os.path.join(out_dir, f"selection_vs_{axis}.png"),
    }
    atomic_write_text(files["selection_table"], table)
    atomic_write_text(files["selection_csv"], selection_csv(axis, rows))
    atomic_write_text(files["selection_candidates"], candidates_csv(runs))
    atomic_write_bytes(files["selection_plot"], plot_accuracy(axis, rows))
    return {"selection_table": table, "selection_rows": rows, "selection_files": files}
