"""Writing a report directory (``smoothtopk report``, the end of a sweep): the tables of
:mod:`.tables` and the plots of :mod:`.plots` from the runs of :mod:`.load`, each file atomic."""

from __future__ import annotations

import os

from ..checkpoint import atomic_write_bytes, atomic_write_text
from .aggregate import aggregate, long_tail_rows, selection_rows, topk_rows, training_rows
from .load import RunResult, label_recipes, load_runs
from .plots import plot_accuracy, plot_curves, plot_topk, plot_training_accuracy
from .selection import has_choices
from .tables import (
    candidates_csv,
    long_tail_table,
    machines_note,
    markdown_table,
    rows_csv,
    selection_csv,
    selection_table,
    topk_table,
)


def write_report(paths: list[str], out_dir: str, select: bool | None = None) -> dict:
    """Read the runs, then write ``results.md``, ``results.csv``, ``accuracy_vs_<axis>.png``,
    ``training_curves.png`` and ``training_accuracy.png`` (and ``long_tail.md`` when some run is
    long-tailed, the k study's files of :func:`write_topk` when some run recorded top-1 ...
    top-10) into ``out_dir``; returns the table and the paths. With ``select`` (``None``: when
    some loss has several configurations per setting and seed) also the selection files of
    :func:`write_selection` (``selection_table``, ``selection_rows``)."""
    runs = load_runs(paths)
    label_recipes(runs)
    axis, rows = aggregate(runs)
    if not rows:
        raise ValueError("none of the runs has finished an epoch yet")
    table, tail = _results_text(axis, rows, runs)
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
    files["training_accuracy_plot"] = os.path.join(out_dir, "training_accuracy.png")
    atomic_write_bytes(
        files["training_accuracy_plot"], plot_training_accuracy(*training_rows(runs))
    )
    files.update(write_topk(runs, out_dir))
    if tail is not None:
        files["long_tail_table"] = os.path.join(out_dir, "long_tail.md")
        atomic_write_text(files["long_tail_table"], tail)
    result = {"table": table, "axis": axis, "rows": rows, "files": files,
              "machines": sorted({label for run in runs for label in run.machines})}  # fmt: skip
    if select or (select is None and has_choices(runs)):
        result.update(write_selection(runs, out_dir))
        files.update(result.pop("selection_files"))
    return result


def _results_text(axis: str, rows: list[dict], runs: list[RunResult]) -> tuple[str, str | None]:
    """``results.md`` (the table, the long-tailed table when some run with an epoch is
    long-tailed, the machines' note) and ``long_tail.md`` (``None`` without one)."""
    table, tail = markdown_table(axis, rows), None
    if any(run.cfg.long_tailed for run in runs if run.best is not None):
        tail = long_tail_table(long_tail_rows(runs))
        table += "\nLong-tailed protocol (test %, macro = mean over classes):\n\n" + tail
    note = machines_note(runs)
    return table + (f"\n{note}" if note else ""), tail


def write_topk(runs: list[RunResult], out_dir: str) -> dict:
    """The k study's ``topk.md`` (:func:`.tables.topk_table`) and ``accuracy_vs_k.png``
    (:func:`.plots.plot_topk`) when some run's last epoch holds top-1 ... top-10 (none for runs
    recorded before evaluation measured them); returns their paths."""
    rows = topk_rows(runs)
    if not rows:
        return {}
    files = {"topk_table": os.path.join(out_dir, "topk.md"),
             "topk_plot": os.path.join(out_dir, "accuracy_vs_k.png")}  # fmt: skip
    atomic_write_text(files["topk_table"], topk_table(rows))
    atomic_write_bytes(files["topk_plot"], plot_topk(rows))
    return files


def write_selection(runs: list[RunResult], out_dir: str) -> dict:
    """Write ``selection.md`` (two tables: the selection by validation top-5, then by
    validation top-1), ``selection.csv`` (the rows of both, column ``selected_by``),
    ``selection_candidates.csv`` and ``selection_vs_<axis>.png`` (test accuracy of the
    configurations selected by validation top-5) into ``out_dir``; returns
    ``selection_table``, ``selection_rows`` (by validation top-5), ``selection_rows_top1`` and
    ``selection_files``."""
    axis, rows = selection_rows(runs, "val_top5")
    _, rows_top1 = selection_rows(runs, "val_top1")
    table = (
        "## Selected by validation top-5\n\n" + selection_table(axis, rows, "val_top5")
        + "\n## Selected by validation top-1\n\n" + selection_table(axis, rows_top1, "val_top1")
    )  # fmt: skip
    files = {
        "selection_table": os.path.join(out_dir, "selection.md"),
        "selection_csv": os.path.join(out_dir, "selection.csv"),
        "selection_candidates": os.path.join(out_dir, "selection_candidates.csv"),
        "selection_plot": os.path.join(out_dir, f"selection_vs_{axis}.png"),
    }
    atomic_write_text(files["selection_table"], table)
    atomic_write_text(files["selection_csv"], selection_csv(axis, rows + rows_top1))
    atomic_write_text(files["selection_candidates"], candidates_csv(runs))
    atomic_write_bytes(files["selection_plot"], plot_accuracy(axis, rows))
    return {"selection_table": table, "selection_rows": rows, "selection_rows_top1": rows_top1,
            "selection_files": files}  # fmt: skip
