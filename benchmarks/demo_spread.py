"""How far the demo table moves on one machine when what a new CPU would change is changed.

    python -m benchmarks.demo_spread --out runs/demo-spread            # every setting (~15 min)
    python -m benchmarks.demo_spread --out runs/demo-spread --settings native,avx2
    python -m benchmarks.demo_spread --out runs/demo-spread --tables-only   # tabulate again

Training amplifies rounding: another CPU kind (another instruction set for torch's kernels and
oneDNN's convolutions), another thread count or another smooth-loss backend changes the last
bits of every step, and after 12 epochs the demo's accuracies move by a few points. One machine
can sample that spread by running ``smoothtopk demo`` under each of :data:`SETTINGS`; this
writes each setting's table, then ``OUT/spread.json`` and ``OUT/spread.md``: every cell's
values, their range, per metric the largest range, and the tolerance that
``tests/demo_table.py`` derives from it (:func:`tolerance`; docs/experiments.md, "The demo
check"). The README's table, printed on another machine, joins as one more table (``--readme``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import demo_table  # noqa: E402  (tests/demo_table.py: the table parser of the check)

# name -> (environment variables, extra ``smoothtopk demo`` arguments)
SETTINGS = {
    "native": ({}, []),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
    "default-isa": ({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, []),
    "onednn-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
    "two-threads": ({}, ["--jobs", "1"]),  # one worker with every core instead of one per core
    "pytorch-backend": ({"SMOOTHTOPK_BACKEND": "pytorch"}, []),  # no compiler: the reference
}
#: how the ``--readme`` table was made
README_TABLE = (
    "the README's table before 2026-12-03, printed by `make demo` on an earlier machine of the "
    "project (not recorded)"
)


def run_setting(name: str, out: Path) -> list[list[str]]:
    """``smoothtopk demo`` under one setting into ``out/name``; its table's cells."""
    env_vars, extra = SETTINGS[name]
    directory = out / name
    cmd = [sys.executable, "-m", "smoothtopk", "demo", "--out", str(directory), "--overwrite",
           "--no-progress", *extra]  # fmt: skip
    subprocess.run(cmd, env={**os.environ, **env_vars}, check=True, cwd=ROOT)
    return demo_table.cells(demo_table.table_rows((directory / "report/results.md").read_text()))


def tolerance(max_range: dict[str, float]) -> dict[str, float]:
    """The demo check's tolerance per metric: 1.5 times the largest range measured in a cell of
    that metric, rounded up to half a point. A cell's values scatter across machines; the
    largest of the pairwise differences among a handful of tables is about 3 standard
    deviations, so 1.5 times it is about 4.5: a correct table fails by chance rarely.

    Example:
        >>> tolerance({"top-1": 6.1, "top-5": 3.4})
        {'top-1': 9.5, 'top-5': 5.5}
    """
    return {m: math.ceil(1.5 * r * 2 - 1e-9) / 2 for m, r in max_range.items()}


def spread(tables: dict[str, list[list[str]]]) -> dict:
    """Per cell: the values of every table and their range; per metric: the largest range and
    the tolerance derived from it."""
    names = list(tables)
    first = tables[names[0]]
    cells = {}
    for r, row in enumerate(first[1:], start=1):
        for c in range(1, len(row)):
            values = {name: float(tables[name][r][c]) for name in names}
            key = f"p = {row[0]}, {first[0][c]}"
            cells[key] = {"values": values, "range": max(values.values()) - min(values.values())}
    max_range = {}
    for key, cell in cells.items():
        metric = demo_table.metric(key)
        max_range[metric] = max(max_range.get(metric, 0.0), round(cell["range"], 6))
    return {"header": first[0], "cells": cells, "max_range": max_range,
            "tolerance": tolerance(max_range)}  # fmt: skip


def _setting_text(setting) -> str:
    if isinstance(setting, str):
        return setting
    env_vars, extra = setting
    words = [f"`{k}={v}`" for k, v in env_vars.items()] + [f"`demo {' '.join(extra)}`"] * bool(
        extra
    )
    return ", ".join(words) or "as `make demo` runs it"


def markdown(result: dict) -> str:
    """The measurement as docs/demo_spread.md shows it."""
    names = list(result["settings"])
    lines = [
        "# The demo's spread across machines",
        "",
        "Written by `python -m benchmarks.demo_spread --readme README.md` (see",
        f'docs/experiments.md, "The demo check"). Machine of the settings: {result["machine"]}.',
        "",
        "| table | how it was made |",
        "|---|---|",
    ]
    lines += [f"| {n} | {_setting_text(result['settings'][n])} |" for n in names]
    lines += [
        "",
        "Test accuracy (%) per cell:",
        "",
        "| cell | " + " | ".join(names) + " | range |",
        "|---" * (len(names) + 2) + "|",
    ]
    for key, cell in result["cells"].items():
        values = " | ".join(f"{cell['values'][n]:.1f}" for n in names)
        lines.append(f"| {key} | {values} | {cell['range']:.1f} |")
    lines.append("")
    for metric, largest in result["max_range"].items():
        lines.append(
            f"- {metric}: largest range {largest:.1f} points, so the demo check's "
            f"tolerance is ±{result['tolerance'][metric]} points"
        )
    return "\n".join(lines) + "\n"  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo-spread")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}"
    )
    parser.add_argument(
        "--readme", type=Path, default=None, help="add this README's demo table as one more table"
    )
    parser.add_argument("--tables-only", action="store_true",
                        help="tabulate the runs already in OUT, run nothing")  # fmt: skip
    args = parser.parse_args(argv)
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        parser.error(f"--settings: unknown {unknown}; expected names of {', '.join(SETTINGS)}")
    from smoothtopk.experiments.records import machine, machine_label

    tables = {}
    if args.readme is not None:
        tables["README"] = demo_table.cells(demo_table.readme_rows(args.readme.read_text()))
    for name in names:
        if args.tables_only:
            path = args.out / name / "report/results.md"
            if not path.is_file():
                parser.error(f"--tables-only: {path} does not exist (run that setting first)")
            text = path.read_text()
            tables[name] = demo_table.cells(demo_table.table_rows(text))
        else:
            tables[name] = run_setting(name, args.out)
        settings = {n: SETTINGS.get(n, README_TABLE) for n in tables}
        result = {"machine": machine_label(machine()), "settings": settings, **spread(tables)}
        (args.out / "spread.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "spread.md").write_text(markdown(result))
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
