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

from .checkpoint import atomic_write_bytes, atomic_write_text
from .config import Config
from .records import read_metrics
from .rundir import CONFIG, is_run_dir, saved_config


@dataclass
class RunResult:
    path: str
    cfg: Config
    history: list[dict]
    best: dict | None
    effective_flip_rate: float | None = None
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
    return RunResult(path, cfg, history, select_best(history), rate)


def axis_of(runs: list[RunResult]) -> str:
    """``subset`` when the runs differ in training subset, else ``noise``."""
    return "subset" if len({r.cfg.subset for r in runs}) > 1 else "noise"


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


def data_label(cfg: Config) -> str:
    """The data set of a run as the tables show it: ``embedded``, or ``embedded LT10`` for the
    long-tailed protocol with imbalance ratio 10."""
    if cfg.imbalance_ratio is None:
        return cfg.dataset
    return f"{cfg.dataset} LT{cfg.imbalance_ratio:g}"


def aggregate(runs: list[RunResult]) -> tuple[str, list[dict]]:
    """One row per (data set, loss, x) with mean test top-1/top-5 over seeds, in percent."""
    axis = axis_of(runs)
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for run in runs:
        if run.best is None:
            continue
        x = run.cfg.noise if axis == "noise" else run.cfg.subset
        groups[(data_label(run.cfg), run.label, x)].append(run)
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
    key = (lambda v: v) if axis == "noise" else _subset_key
    rows.sort(key=lambda r: (r["dataset"], key(r[axis]), r["loss"]))
    return axis, rows


def markdown_table(axis: str, rows: list[dict]) -> str:
    """Rows: noise levels (or subset sizes); columns: test top-1 and top-5 (%) per loss, as
    ``mean ± std (n=seeds)`` when some cell averages several seeds."""
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    key = (lambda v: v) if axis == "noise" else _subset_key
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
        cells = ([dataset] if len(datasets) > 1 else []) + [f"{x:g}" if axis == "noise" else str(x)]
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


def plot_accuracy(axis: str, rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, 2, figsize=(10, 4))
    lines = list(dict.fromkeys((r["dataset"], r["loss"]) for r in rows))
    several = len({d for d, _ in lines}) > 1  # e.g. imbalance ratios: one line per data set
    for panel, metric, title in (
        (panels[0], "test_top1", "top-1"),
        (panels[1], "test_top5", "top-5"),
    ):
        for dataset, loss in lines:
            mine = [r for r in rows if r["loss"] == loss and r["dataset"] == dataset]
            if axis == "noise":
                mine.sort(key=lambda r: r["noise"])
                xs = [r["noise"] for r in mine]
            else:
                mine.sort(key=lambda r: _subset_key(r["subset"]))
                xs = list(range(len(mine)))
                panel.set_xticks(xs, [r["subset"] for r in mine])
            errors = [r[f"{metric}_std"] for r in mine]
            panel.errorbar(xs, [r[metric] for r in mine], yerr=errors if any(errors) else None,
                           marker="o", capsize=3,
                           label=f"{loss}, {dataset}" if several else loss)  # fmt: skip
        panel.set_xlabel("label noise level p" if axis == "noise" else "training subset")
        panel.set_ylabel(f"test {title} accuracy (%)")
        many = any(r["n"] > 1 for r in rows)
        panel.set_title(f"test {title} at the best validation top-5 epoch"
                        + ("\n(mean ± std over seeds)" if many else ""), fontsize=10)  # fmt: skip
        panel.grid(alpha=0.3)
    # One legend beside the panels, so that many losses hide no data.
    handles, labels = panels[0].get_legend_handles_labels()
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
    axis = axis_of(runs)
    labels = list(dict.fromkeys(r.label for r in runs))
    styles = ["-", "--", ":", "-."]
    xs = sorted({r.cfg.noise if axis == "noise" else r.cfg.subset for r in runs}, key=str)
    cmap = plt.get_cmap("viridis")
    for run in runs:
        if not run.history:
            continue
        x = run.cfg.noise if axis == "noise" else run.cfg.subset
        color = cmap(xs.index(x) / max(len(xs) - 1, 1))
        style = styles[labels.index(run.label) % len(styles)]
        epochs = [h["epoch"] for h in run.history]
        name = f"{run.label}, {axis} {x:g}" if axis == "noise" else f"{run.label}, {x}"
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


def write_report(paths: list[str], out_dir: str) -> dict:
    """Read the runs, then write ``results.md``, ``results.csv``, ``accuracy_vs_<axis>.png`` and
    ``training_curves.png`` (and ``long_tail.md`` for long-tailed runs) into ``out_dir``;
    returns the table and the paths."""
    runs = [load_run(p) for p in find_runs(paths)]
    axis, rows = aggregate(runs)
    if not rows:
        raise ValueError("none of the runs has finished an epoch yet")
    table = markdown_table(axis, rows)
    tail_rows = long_tail_rows(runs)
    long_tail = any(r["test_head_top5"] is not None for r in tail_rows)
    if long_tail:  # the long-tailed protocol: micro, macro and per-third accuracies
        tail = long_tail_table(tail_rows)
        table += "\nLong-tailed protocol (test %, macro = mean over classes):\n\n" + tail
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
    return {"table": table, "axis": axis, "rows": rows, "files": files}
