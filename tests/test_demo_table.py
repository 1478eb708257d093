"""The README-equals-demo check (tests/demo_table.py) compares the right rows."""

import demo_table

README = """text
<!-- demo-table -->
| noise | CE top-1 |
|---|---|
| 0 | 43.4 |
<!-- /demo-table -->
| other | table |
"""


def test_equal_tables_pass_and_a_changed_cell_fails(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    produced = tmp_path / "results.md"
    produced.write_text("# Results\n\n| noise | CE top-1 |\n|---|---|\n| 0 | 43.4 |\n")
    assert demo_table.main([str(readme), str(produced)]) == 0
    produced.write_text("| noise | CE top-1 |\n|---|---|\n| 0 | 43.5 |\n")
    assert demo_table.main([str(readme), str(produced)]) == 1
    assert demo_table.main([str(readme), str(tmp_path / "missing.md")]) == 2
    readme.write_text("no markers\n")
    assert demo_table.main([str(readme), str(produced)]) == 2
