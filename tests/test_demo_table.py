"""The demo check (tests/demo_table.py): tolerant to another machine, strict on a regression.

The tables below are real outputs of ``smoothtopk demo`` (docs/demo_spread.md): the README's,
the same demo on other machines, and a regression, the demo with the smooth loss trained at the
wrong ``k`` (``tests/data/demo_wrong_k.md``: ``smoothtopk sweep --preset demo-sweep --k 1``,
its header relabelled to the demo's so that only its numbers can fail it).
"""

import json
from pathlib import Path

import pytest

import demo_table

ROOT = Path(__file__).resolve().parent.parent
HEADER = (
    "| noise | CE top-1 | CE top-5 | L_{5,1} (alpha=1) top-1 | L_{5,1} (alpha=1) top-5 |\n"
    "|---|---|---|---|---|\n"
)

# the README's table: make demo on an AMD EPYC (AVX512, torch 2.14.1)
REFERENCE = (
    HEADER
    + """| 0 | 42.9 | 92.6 | 34.6 | 97.0 |
| 0.2 | 33.5 | 87.0 | 29.5 | 90.6 |
| 0.4 | 28.0 | 78.1 | 26.9 | 83.3 |
| 0.6 | 21.2 | 63.5 | 25.4 | 72.8 |
| 0.8 | 14.3 | 43.5 | 16.3 | 51.5 |
"""
)

# the same demo on other machines: the README's table before 2026-12-03 (an earlier machine of
# the project), and ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 on the AMD EPYC
OTHER_MACHINES = [
    HEADER
    + """| 0 | 43.9 | 93.4 | 33.4 | 97.0 |
| 0.2 | 33.4 | 86.8 | 29.8 | 90.5 |
| 0.4 | 28.1 | 78.6 | 23.5 | 81.7 |
| 0.6 | 21.3 | 62.2 | 24.7 | 71.8 |
| 0.8 | 15.8 | 46.2 | 16.8 | 52.9 |
""",
    HEADER
    + """| 0 | 38.7 | 92.2 | 35.9 | 97.2 |
| 0.2 | 29.6 | 85.3 | 29.4 | 90.9 |
| 0.4 | 29.8 | 78.0 | 24.3 | 82.2 |
| 0.6 | 19.5 | 62.1 | 26.2 | 72.0 |
| 0.8 | 15.6 | 46.8 | 16.4 | 51.8 |
""",
]

CLAIMS_TEXT = "\n".join(claim.text for claim in demo_table.CLAIMS)


def readme(tmp_path, table=REFERENCE, prose=CLAIMS_TEXT):
    path = tmp_path / "README.md"
    path.write_text(f"text\n{demo_table.START}\n{table}{demo_table.END}\n{prose}\n| other |\n")
    return str(path)


def produced(tmp_path, table):
    path = tmp_path / "results.md"
    path.write_text("Machine: somewhere.\n\n" + table)
    return str(path)


@pytest.mark.parametrize("table", [REFERENCE, *OTHER_MACHINES])
def test_the_same_table_and_other_machines_tables_pass(tmp_path, table):
    assert demo_table.main([readme(tmp_path), produced(tmp_path, table)]) == 0


def test_a_cell_beyond_the_tolerance_fails_and_says_which(tmp_path, capsys):
    moved = REFERENCE.replace("| 0.2 | 33.5 |", "| 0.2 | 43.1 |")  # CE top-1 +9.6 points
    assert demo_table.main([readme(tmp_path), produced(tmp_path, moved)]) == 1
    assert "p = 0.2, CE top-1: 43.1 instead of 33.5" in capsys.readouterr().err


def test_a_broken_statement_fails_even_within_the_tolerance(tmp_path, capsys):
    # L_{5,1}'s top-5 at p = 0.4 drops 5.3 points (within ±5.5), below CE's 78.1
    table = REFERENCE.replace("| 26.9 | 83.3 |", "| 26.9 | 78.0 |")
    assert demo_table.main([readme(tmp_path), produced(tmp_path, table)]) == 1
    err = capsys.readouterr().err
    assert "better top-5 at every noise level' does not hold on the produced table" in err
    assert "instead of" not in err  # no cell moved beyond the tolerance


def test_the_smooth_loss_at_the_wrong_k_fails(tmp_path, capsys):
    wrong_k = (Path(__file__).parent / "data" / "demo_wrong_k.md").read_text()
    assert demo_table.main([readme(tmp_path), produced(tmp_path, wrong_k)]) == 1
    assert "does not hold on the produced table" in capsys.readouterr().err


def test_other_rows_or_columns_fail(tmp_path, capsys):
    fewer = "\n".join(REFERENCE.splitlines()[:-1]) + "\n"
    assert demo_table.main([readme(tmp_path), produced(tmp_path, fewer)]) == 1
    relabelled = REFERENCE.replace("L_{5,1}", "L_{1,1}")
    assert demo_table.main([readme(tmp_path), produced(tmp_path, relabelled)]) == 1
    assert "header or noise levels differ" in capsys.readouterr().err


def test_missing_files_markers_or_statements_are_errors(tmp_path, capsys):
    table = produced(tmp_path, REFERENCE)
    assert demo_table.main([str(tmp_path / "missing.md"), table]) == 2
    assert demo_table.main([readme(tmp_path, prose="no statements"), table]) == 2
    assert "the README does not state" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("no markers\n")
    assert demo_table.main([str(tmp_path / "README.md"), table]) == 2


def test_the_readme_states_every_checked_statement_and_its_table_satisfies_them():
    text = (ROOT / "README.md").read_text()
    header, table = demo_table.parse(demo_table.readme_rows(text))
    for claim in demo_table.CLAIMS:
        assert claim.text in text, claim.text
        assert claim.holds(table), claim.text


def test_the_tolerance_is_the_rule_applied_to_the_published_measurement():
    from benchmarks import demo_spread

    measured = json.loads((ROOT / "docs" / "demo_spread.json").read_text())
    assert demo_spread.tolerance(measured["max_range"]) == demo_table.TOLERANCE
    assert len(measured["settings"]) >= 7  # six settings of one CPU and the README's machine


@pytest.mark.parametrize("claim", demo_table.CLAIMS, ids=lambda c: c.text)
def test_every_statement_holds_on_every_measured_table(claim):
    """The statements the README makes hold on each of the measured tables, not only on one."""
    measured = json.loads((ROOT / "docs" / "demo_spread.json").read_text())
    for name in measured["settings"]:
        table = {}
        for key, cell in measured["cells"].items():
            p, title = key.removeprefix("p = ").split(", ", 1)
            table.setdefault(p, {})[title] = cell["values"][name]
        assert claim.holds(table), name
