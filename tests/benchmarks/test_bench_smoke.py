"""The benchmark harness end to end on one tiny configuration (no timing thresholds, ever)."""

from __future__ import annotations

import json


def _ours_importable() -> bool:
    try:
        import smoothtopk

        return callable(getattr(smoothtopk, "smooth_topk_svm_loss", None))
    except ImportError:
        return False


def test_one_tiny_configuration_end_to_end(tmp_path):
    from benchmarks import run

    argv = [
        "--n",
        "10",
        "--k",
        "1",
        "--batch",
        "4",
        "--contenders",
        "smooth_topk",
        "--rounds",
        "1",
        "--min-run-time",
        "0.001",
        "--out",
        str(tmp_path),
    ]
    assert run.main(argv) == 0  # the configuration itself runs in a fresh subprocess

    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["metadata"]["cpu_model"]
    assert doc["metadata"]["environment"]["torch"]
    [entry] = doc["results"]
    assert entry["config"] == {
        "n": 10,
        "k": 1,
        "batch": 4,
        "device": "cpu",
        "dtype": "float32",
        "threads": 1,
    }
    ce = entry["contenders"]["cross_entropy"]
    for op in ("forward", "backward", "forward_backward"):
        assert ce[op]["median_s"] > 0
        assert ce[op]["ratio"] == 1.0
        assert ce[op]["ratio_iqr"] >= 0
    assert "extra_bytes" in ce["memory"] or "error" in ce["memory"]

    ours = entry["contenders"]["smooth_topk"]
    if _ours_importable():
        for op in ("forward", "backward", "forward_backward"):
            assert ours[op]["ratio"] > 0
    else:  # a contender that fails is reported, not fatal
        assert "error" in ours

    md = (tmp_path / "results.md").read_text()
    assert "forward+backward" in md and "`smooth_topk`" in md and "×" in md
    assert (tmp_path / "benchmarks.png").stat().st_size > 0


def test_report_shows_errors_instead_of_numbers(tmp_path):
    from benchmarks import report

    stat = {"median_s": 1e-3, "iqr_s": 1e-4, "ratio": 1.0, "ratio_iqr": 0.0}
    doc = {
        "metadata": {"contenders": ["cross_entropy", "smooth_topk", "pytopk"]},
        "results": [
            {
                "config": {
                    "n": 1000,
                    "k": 5,
                    "batch": 256,
                    "device": "cpu",
                    "dtype": "float32",
                    "threads": 1,
                },
                "contenders": {
                    "cross_entropy": {
                        "forward": stat,
                        "backward": stat,
                        "forward_backward": stat,
                        "memory": {"extra_bytes": 1 << 20, "ratio": 1.0},
                    },
                    "smooth_topk": {
                        "forward": stat,
                        "backward": stat,
                        "forward_backward": {**stat, "ratio": 3.5, "ratio_iqr": 0.2},
                        "memory": {"extra_bytes": 3 << 20, "ratio": 3.0},
                    },
                    "pytopk": {"error": "ValueError: BalNoisedTopK needs k + 1 <= n | boom"},
                },
                "environment": {"torch": "x"},
            }
        ],
    }
    md = report.markdown(doc)
    assert "error: ValueError: BalNoisedTopK needs k + 1 <= n / boom" in md
    assert "3.50× (0.20)" in md
    rows = report.targets(doc)
    assert [r["met"] for r in rows] == [False, False]
    report.write(doc, tmp_path)
    assert (tmp_path / "benchmarks.png").exists()
