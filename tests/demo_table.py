"""Check a fresh demo table against the README's (CI: ``make demo-check``).

    python tests/demo_table.py README.md runs/demo-check/report/results.md

The README holds the table between ``<!-- demo-table -->`` and ``<!-- /demo-table -->``, as
``make demo`` printed it on the machine its caption names. Training amplifies rounding, so
another CPU kind, thread count or backend moves the cells by a few points (measured with
``benchmarks/demo_spread.py``; docs/experiments.md, "The demo check"). The check passes when

* the produced table has the README's header and noise levels,
* every cell is within :data:`TOLERANCE` points of the README's (one figure for top-1 cells,
  one for top-5 cells), and
* every statement of :data:`CLAIMS` holds on the produced table (and on the README's), each
  statement written in the README word for word, so that the prose cannot drift from what is
  checked.

Exit status 0 when it passes, 1 with every failure listed when not, 2 when a file, a marker or
a statement is missing from the README.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

START, END = "<!-- demo-table -->", "<!-- /demo-table -->"

#: points (percent accuracy) a top-1 or top-5 cell may move from the README's: 1.5 times the
#: largest difference measured between two tables in a cell of that metric, rounded up to half
#: a point (``benchmarks/demo_spread.py``: six settings of one CPU and the README's machine;
#: the measurement is docs/demo_spread.md, the rule ``demo_spread.tolerance``)
TOLERANCE = {"top-1": 9.5, "top-5": 5.5}

Table = dict[str, dict[str, float]]  # noise level -> column title -> accuracy in percent
CE1, CE5, L1, L5 = "CE top-1", "CE top-5", "L_{5,1} (alpha=1) top-1", "L_{5,1} (alpha=1) top-5"


@dataclass(frozen=True)
class Claim:
    """A statement the README makes from the table, and its test on a table."""

    text: str  #: as the README writes it
    holds: Callable[[Table], bool]


def _lead(table: Table, better: str, worse: str, levels) -> bool:
    return all(table[p][better] > table[p][worse] for p in levels)


def _falls(table: Table, column: str) -> bool:
    values = [table[p][column] for p in table]
    return all(a > b for a, b in zip(values, values[1:], strict=False))


def _gap(table: Table, p: str) -> float:
    return table[p][L5] - table[p][CE5]


CLAIMS = (
    Claim(
        "L_{5,1} has the better top-5 at every noise level",
        lambda t: _lead(t, L5, CE5, t),
    ),
    Claim(
        "its top-5 lead is largest at p = 0.6",
        lambda t: all(_gap(t, "0.6") > _gap(t, p) for p in t if p != "0.6"),
    ),
    Claim(
        "both losses' top-5 falls at every step of the noise",
        lambda t: _falls(t, CE5) and _falls(t, L5),
    ),
    Claim(
        "cross-entropy has the better top-1 without noise",
        lambda t: _lead(t, CE1, L1, ("0",)),
    ),
    Claim(
        "L_{5,1} has the better top-1 at p = 0.6",
        lambda t: _lead(t, L1, CE1, ("0.6",)),
    ),
)


def table_rows(text: str) -> list[str]:
    """The markdown table rows of a text, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip().startswith("|")]


def cells(rows: list[str]) -> list[list[str]]:
    """The cells of markdown table rows, without the ``|---|`` separator row."""
    table = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    return [row for row in table if not all(set(cell) <= set("-: ") for cell in row)]


def readme_rows(text: str) -> list[str]:
    """The table rows between the demo-table markers of the README."""
    if START not in text or END not in text:
        raise ValueError(f"the README has no {START} ... {END} block")
    return table_rows(text.split(START, 1)[1].split(END, 1)[0])


def parse(rows: list[str]) -> tuple[list[str], Table]:
    """``(header, table)`` of the demo's markdown rows; ValueError if a cell is no number."""
    grid = cells(rows)
    if not grid:
        raise ValueError("no table")
    header, table = grid[0], {}
    for row in grid[1:]:
        try:
            table[row[0]] = {title: float(v) for title, v in zip(header[1:], row[1:], strict=True)}
        except ValueError as error:
            raise ValueError(f"row {row[0]!r}: {error}") from None
    return header, table


def failures(expected: tuple[list[str], Table], got: tuple[list[str], Table]) -> list[str]:
    """Every way in which ``got`` fails the check against the README's ``expected``."""
    (header, readme), (got_header, table) = expected, got
    if got_header != header or list(table) != list(readme):
        return [f"header or noise levels differ: {got_header} {list(table)} "
                f"instead of {header} {list(readme)}"]  # fmt: skip
    found = []
    for p, row in readme.items():
        for title, value in row.items():
            moved, allowed = table[p][title] - value, TOLERANCE[metric(title)]
            if abs(moved) > allowed:
                found.append(f"p = {p}, {title}: {table[p][title]:.1f} instead of {value:.1f} "
                             f"({moved:+.1f} points, tolerance ±{allowed})")  # fmt: skip
    for claim in CLAIMS:
        for name, t in (("README's table", readme), ("produced table", table)):
            if not claim.holds(t):
                found.append(f"the statement {claim.text!r} does not hold on the {name}")
    return found


def metric(title: str) -> str:
    """``top-1`` or ``top-5``: the metric of a column title."""
    return title.rsplit(" ", 1)[-1]


def largest_move(readme: Table, table: Table) -> tuple[float, str]:
    """The largest ``|produced - README|`` over the cells, and which cell."""
    moves = [(abs(table[p][c] - v), f"p = {p}, {c}") for p in readme for c, v in readme[p].items()]
    return max(moves)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as readme_file, open(argv[1]) as produced:
            readme_text = readme_file.read()
            expected, got = parse(readme_rows(readme_text)), parse(table_rows(produced.read()))
    except (OSError, ValueError) as error:
        print(f"demo-check: error: {error}", file=sys.stderr)
        return 2
    missing = [claim.text for claim in CLAIMS if claim.text not in readme_text]
    if missing:
        print(f"demo-check: error: the README does not state {missing}", file=sys.stderr)
        return 2
    found = failures(expected, got)
    if found:
        print("demo-check: the demo table fails the README's:", file=sys.stderr)
        print("\n".join("  - " + line for line in found), file=sys.stderr)
        print("README:\n" + "\n".join(readme_rows(readme_text)), file=sys.stderr)
        with open(argv[1]) as produced:
            print("produced:\n" + "\n".join(table_rows(produced.read())), file=sys.stderr)
        return 1
    move, cell = largest_move(expected[1], got[1])
    allowed = ", ".join(f"±{v} points ({m})" for m, v in TOLERANCE.items())
    print(f"demo-check: every cell within {allowed} of the README's (largest move {move:.1f}, "
          f"{cell}); the README's {len(CLAIMS)} statements hold")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
