"""The report's text files: the results table (markdown, CSV), the long-tailed table, the
selection table (markdown, CSV, and every candidate), and the note on the machines the runs
come from. They format the rows of :mod:`.aggregate`; nothing here chooses or averages."""

from __future__ import annotations

import csv
import io

from .aggregate import AXES, LONG_TAIL_COLUMNS, LONG_TAIL_METRICS, LONG_TAIL_PAIRED
from .load import RunResult
from .selection import SELECTABLE, candidates, loss_group, select_runs


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


# -- the selection table -------------------------------------------------------------------------

SELECTION_NOTE = (
    "Per loss, setting and seed, the configuration with the best clean validation top-5 (at its "
    "best epoch; ties: validation top-1, then the smaller options) is selected; the test "
    "accuracy of that run at that epoch is reported, and never chooses anything. Δ: the "
    "per-seed paired difference to CE (selected the same way), mean ± std over seeds, in "
    "points, then each seed's difference in seed order.\n"
)


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
    long_tail = any(r["long_tailed"] for r in rows)
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
    for members in candidates(runs).values():
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
