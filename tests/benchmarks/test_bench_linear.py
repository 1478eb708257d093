"""benchmarks/linear.py end to end on one tiny shape (no timing or memory thresholds, ever)."""

import json

import pytest
import torch.nn.functional as F


def test_one_tiny_shape_end_to_end(tmp_path):
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this torch has no F.linear_cross_entropy (the lce_chunked contender)")
    from benchmarks import linear

    assert linear.main(["--shapes", "16x8x50", "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert set(rows[0]["results"]) == set(linear.CONTENDERS)
    assert "| 16 | 8 | 50 | fused |" in (tmp_path / "results.md").read_text()


def test_the_label_smoothing_contenders_on_request(tmp_path):
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this torch has no F.linear_cross_entropy (the lce_smoothing contender)")
    from benchmarks import linear

    names = ",".join(linear.SMOOTHING_CONTENDERS)
    args = ["--shapes", "16x8x50", "--repeats", "1", "--contenders", names, "--out", str(tmp_path)]
    assert linear.main(args) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert set(rows[0]["results"]) == set(linear.SMOOTHING_CONTENDERS)


def test_several_shapes_each_in_its_own_process(tmp_path):
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this torch has no F.linear_cross_entropy (the lce_chunked contender)")
    from benchmarks import linear

    args = ["--shapes", "16x8x50,8x4x30", "--repeats", "1", "--contenders", "fused,unfused"]
    assert linear.main([*args, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["shape"]["N"], r["shape"]["C"]) for r in rows] == [(16, 50), (8, 30)]
    assert all(set(r["results"]) == {"fused", "unfused"} for r in rows)
