"""The report's text files: the results table (markdown, CSV), the long-tailed table, the
selection table (markdown, CSV, and every candidate), and the note on the machines the runs
come from. They format the rows of :mod:`.aggregate`; nothing here chooses or averages."""

from __future__ import annotations

import csv
import io

from .aggregate import AXES, LONG_TAIL_COLUMNS, LONG_TAIL_METRICS, LONG_TAIL_PAIRED, natural_key
from .load import RunResult
from .selection import RULES, SELECTABLE, candidates, loss_group, select_runs


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
        dict.fromkeys((r["dataset"], r[axis]) for r in rows),
        key=lambda t: (natural_key(t[0]), key(t[1])),
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
            if many_seeds:  # a one-seed cell has no ± (its spread is unknown, not 0)
                top1 = f"{_pm(r['test_top1'], r['test_top1_std'], n=r['n'])}{mark} (n={r['n']})"
                top5 = f"{_pm(r['test_top5'], r['test_top5_std'], n=r['n'])}{mark}"
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
                cells.append(_pm(value[0], value[1], n=r["n"]))
        lines.append("| " + " | ".join(cells + ([str(r["n"])] if many else [])) + " |")
    return "\n".join(lines) + "\n"


# -- the selection table -------------------------------------------------------------------------

#: the selection rules as the tables name them
RULE_NAMES = {"val_top5": "validation top-5", "val_top1": "validation top-1"}


def selection_note(by: str = "val_top5") -> str:
    """What a selection table shows, under the rule ``by``."""
    rule, ties = RULE_NAMES[by], RULE_NAMES[RULES[by]]
    return (
        f"Per loss, setting and seed, the configuration with the best clean {rule} (at its "
        f"best epoch by {rule}; ties: {ties}, then the smaller options) is selected; the test "
        "accuracy of that run at that epoch (test) and at its last epoch (final) is "
        "reported, and never chooses anything. Δ: the per-seed paired difference to CE "
        "(selected the same way; the same noise and subsample draws at a seed), in points: "
        "its mean, the 95 % interval mean ± t(0.975, n−1) · s / √n over the n seeds (s: the "
        "sample standard deviation of the differences), the verdict (clear: the interval "
        "excludes 0; within seed noise: it holds 0; one seed: no interval), then each seed's "
        "difference in seed order. One-seed cells have no ±.\n"
    )


SELECTION_NOTE = selection_note()


def _pm(mean, std, signed: bool = False, n: int = 2) -> str:
    """``mean ± std``, or ``mean`` alone for one seed (``n`` 1) or no spread (``std`` None)."""
    if mean is None:
        return ""
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return text if std is None or n < 2 else f"{text} ± {std:.1f}"


def _delta(r: dict, metric: str) -> str:
    """A paired-difference cell: ``+4.7 [+0.5, +8.9] clear (+3.1, +6.5, +4.5)``: the mean,
    the 95 % interval, the verdict, the seeds' values last (one pair: ``+4.7 one seed``)."""
    key = f"diff_{metric}"
    if r[key] is None:
        return ""
    if r[f"{key}_low"] is None:
        return f"{r[key]:+.1f} {r[f'{key}_verdict']}"
    seeds = ", ".join(f"{d:+.1f}" for d in r[f"{key}_seeds"])
    interval = f"[{r[f'{key}_low']:+.1f}, {r[f'{key}_high']:+.1f}]"
    return f"{r[key]:+.1f} {interval} {r[f'{key}_verdict']} ({seeds})"


_HEADERS = dict(LONG_TAIL_COLUMNS)
#: the long-tailed headers of the selection table
SELECTION_LONG_TAIL = (*(_HEADERS[m] for m in LONG_TAIL_METRICS),
                       *(f"Δ {_HEADERS[m]} vs CE" for m in LONG_TAIL_PAIRED))  # fmt: skip


def _long_tail_cells(r: dict) -> list[str]:
    return [_pm(r[m], r[f"{m}_std"], n=r["n"]) for m in LONG_TAIL_METRICS] + [
        _delta(r, m) for m in LONG_TAIL_PAIRED
    ]


def selection_table(axis: str, rows: list[dict], by: str = "val_top5") -> str:
    """The markdown selection table under the rule ``by``: one row per loss and noise level (or
    subset, or imbalance ratio), test accuracy at the best and at the final epoch with their
    paired differences to CE (95 % interval, verdict); long-tailed rows add macro, per-third and
    their paired columns."""
    setting = any(r["setting"] for r in rows)
    long_tail = any(r["long_tailed"] for r in rows)
    head = (["setting"] if setting else []) + [axis, "loss", "selected (per seed)", "n",
            f"val top-{by[-1]}", "test top-1", "test top-5", "final top-1", "final top-5",
            "Δ top-1 vs CE", "Δ top-5 vs CE", "Δ final top-1", "Δ final top-5"]  # fmt: skip
    head += list(SELECTION_LONG_TAIL) if long_tail else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark, n = "" if r["complete"] else "*", r["n"]
        cells = ([r["setting"]] if setting else []) + [AXES[axis].text(r[axis]), r["loss"],
                                                        r["selected"], str(n)]  # fmt: skip
        cells += [_pm(r[by], r[f"{by}_std"], n=n),
                  *(_pm(r[m], r[f"{m}_std"], n=n) + mark
                    for m in ("test_top1", "test_top5", "final_test_top1", "final_test_top5")),
                  *(_delta(r, m) for m in ("test_top1", "test_top5", "final_test_top1",
                                           "final_test_top5"))]  # fmt: skip
        cells += _long_tail_cells(r) if long_tail else []
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\n" + selection_note(by) + edge_warnings(axis, rows)
    if long_tail:
        text += ("\nmacro: the mean over classes; head / medium / tail: the macro top-5 of the "
                 "thirds of the classes by training count.\n")  # fmt: skip
    if any(not r["complete"] for r in rows):
        text += "\n\\* run not finished: best epoch so far.\n"
    return text


_PAIRED_CSV = tuple(f"diff_{m}{s}" for m in ("test_top1", "test_top5", "final_test_top1",
                                              "final_test_top5")
                    for s in ("", "_std", "_low", "_high"))  # fmt: skip


def edge_text(edge: tuple) -> str:
    """``lr = 0.03 is the lowest of its grid (0.03, 0.1, 0.3) at seeds 0, 2``."""
    option, value, side, grid, seeds = edge
    values = ", ".join(f"{v:g}" for v in grid)
    where = ", ".join(str(s) for s in seeds)
    seed = "seeds" if len(seeds) > 1 else "seed"
    return f"{option} = {value:g} is the {side} of its grid ({values}) at {seed} {where}"


def edge_warnings(axis: str, rows: list[dict]) -> str:
    """One warning line per loss, setting and option whose selected value lies on an edge of
    its grid (:func:`.aggregate.grid_edges`): the loss may not be shown at its best; empty
    when none does."""
    lines = []
    for r in rows:
        where = f"{axis} {AXES[axis].text(r[axis])}" + (f", {r['setting']}" if r["setting"] else "")
        lines += [f"- Warning: grid edge: {r['loss']} at {where}: {edge_text(e)}."
                  for e in r.get("edges", [])]  # fmt: skip
    if not lines:
        return ""
    return ("\nGrid edges (a selected value at an edge of its grid: a wider grid may do "
            "better):\n\n" + "\n".join(lines) + "\n")  # fmt: skip


SELECTION_COLUMNS = ("val_top1", "val_top1_std", "val_top5", "val_top5_std", "test_top1",
                     "test_top1_std", "test_top5", "test_top5_std", "final_test_top1",
                     "final_test_top1_std", "final_test_top5", "final_test_top5_std",
                     *_PAIRED_CSV,
                     *(f"{m}{s}" for m in LONG_TAIL_METRICS for s in ("", "_std")),
                     *(f"diff_{m}{s}" for m in LONG_TAIL_PAIRED for s in ("", "_std")))  # fmt: skip


def selection_csv(axis: str, rows: list[dict]) -> str:
    buffer = io.StringIO()
    paired = ("test_top1", "test_top5", "final_test_top1", "final_test_top5", *LONG_TAIL_PAIRED)
    per_seed = [f"diff_{m}_seeds" for m in paired]
    verdicts = [f"diff_{m}_verdict" for m in paired]
    cols = ["selected_by", "setting", "dataset", "loss", axis, "n", "selected", "candidates",
            "grid_edges",
            *SELECTION_COLUMNS, *verdicts, *per_seed, "pairs", "complete", "runs"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{m: "" if r[m] is None else f"{r[m]:.2f}"
                                 for m in SELECTION_COLUMNS},
                         **{c: ";".join(f"{d:.2f}" for d in r[c]) for c in per_seed},
                         "grid_edges": "; ".join(edge_text(e) for e in r["edges"])})  # fmt: skip
    return buffer.getvalue()


def candidates_csv(runs: list[RunResult]) -> str:
    """Every candidate run with what it was judged by (validation) and its test accuracy (%)."""
    chosen = {id(r) for r in select_runs(runs).values()}
    buffer = io.StringIO()
    cols = ["loss", "noise", "subset", "imbalance_ratio", "lookalike_group_size", "seed",
            *SELECTABLE, "best_epoch",
            "val_top1", "val_top5", "test_top1", "test_top5", "selected", "run"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=cols)
    writer.writeheader()
    for members in candidates(runs).values():
        for r in members:
            writer.writerow({
                "loss": loss_group(r.cfg), "noise": r.cfg.noise, "subset": r.cfg.subset,
                "imbalance_ratio": r.cfg.imbalance_ratio, "seed": r.cfg.seed,
                "lookalike_group_size": r.cfg.lookalike_group_size,
                **{o: getattr(r.cfg, o) for o in SELECTABLE},
                "best_epoch": r.best["epoch"],
                **{m: f"{100 * r.best[m]:.2f}" for m in ("val_top1", "val_top5", "test_top1",
                                                         "test_top5")},
                "selected": id(r) in chosen, "run": r.path,
            })  # fmt: skip
    return buffer.getvalue()


# -- the k study ---------------------------------------------------------------------------------

#: the two epochs of the k table: (row key, heading)
TOPK_EPOCHS = (
    ("final", "at the final epoch"),
    ("best", "at the epoch of the best validation top-k (for each k its own)"),
)


def topk_table(rows: list[dict]) -> str:
    """The k study's tables (markdown): test top-k (%) for k = 1 ... 10 per data set, noise
    level, subset and training loss, at the final epoch, then at the best validation top-k
    epoch; ``mean ± std`` over seeds (none for one seed); columns that do not vary are left
    out."""
    ks = sorted({k for r in rows for k in r["ks"]})
    varying = [c for c in ("dataset", "subset") if len({r[c] for r in rows}) > 1]
    head = [*varying, "noise", "loss", "n", *(f"top-{k}" for k in ks)]
    text = ""
    for key, heading in TOPK_EPOCHS:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [str(r[c]) for c in varying] + [f"{r['noise']:g}", r["loss"], str(r["n"])]
            cells += [_pm(*r[key][k], n=r["n"]) if k in r[key] else "" for k in ks]
            lines.append("| " + " | ".join(cells) + " |")
        text += f"### Test top-k {heading}\n\n" + "\n".join(lines) + "\n\n"
    return text + (
        "Test accuracy (%) for every evaluation k of every training loss; a run's best "
        "validation top-k epoch is chosen for each k by its own validation top-k (ties: the "
        "earliest), never by test accuracy. n: seeds; mean ± sample std over them.\n"
    )
