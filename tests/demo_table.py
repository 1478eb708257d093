"""Check that the README's demo table is what ``make demo`` printed (CI: ``make demo-check``).

    python tests/demo_table.py README.md runs/demo-check/report/results.md

The README holds the table between ``<!-- demo-table -->`` and ``<!-- /demo-table -->``; the
markdown table rows (lines starting with ``|``) of both files must be equal. Exit status 1 with
both tables printed when they differ, 2 when a file or a marker is missing.
"""

from __future__ import annotations

import sys

START, END = "<!-- demo-table -->", "<!-- /demo-table -->"


def table_rows(text: str) -> list[str]:
    """The markdown table rows of a text, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip().startswith("|")]


def readme_rows(text: str) -> list[str]:
    """The table rows between the demo-table markers of the README."""
    if START not in text or END not in text:
        raise ValueError(f"the README has no {START} ... {END} block")
    return table_rows(text.split(START, 1)[1].split(END, 1)[0])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as readme, open(argv[1]) as produced:
            expected, got = readme_rows(readme.read()), table_rows(produced.read())
    except (OSError, ValueError) as error:
        print(f"demo-check: error: {error}", file=sys.stderr)
        return 2
    if expected == got:
        print(f"demo-check: the README's demo table equals {argv[1]}")
        return 0
    print("demo-check: the README table differs from what make demo printed", file=sys.stderr)
    print("README:\n" + "\n".join(expected) + "\n\nproduced:\n" + "\n".join(got), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
