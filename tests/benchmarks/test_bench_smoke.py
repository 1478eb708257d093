"""The benchmark harness end to end on one tiny configuration (no timing thresholds, ever)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch


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
        "smooth_topk,smooth_topk_pytorch,ce_compiled,liger_ce",
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

    # The forced PyTorch path runs and says so; auto reports the backend the seam selects.
    forced = entry["contenders"]["smooth_topk_pytorch"]
    if _ours_importable():
        from smoothtopk import backends

        assert forced["backend"] == "pytorch" and forced["forward_backward"]["ratio"] > 0
        x = torch.zeros(4, 10)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(backends.ENV, "auto")
            assert ours["backend"] == backends.select(x, 1).NAME

    compiled = entry["contenders"]["ce_compiled"]  # torch.compile ran, outside the timing
    if shutil.which("c++") or shutil.which("g++"):  # inductor's CPU code needs a C++ compiler
        assert compiled["forward"]["ratio"] > 0 and compiled["forward_backward"]["ratio"] > 0
        assert "median_s" not in compiled["backward"]  # reported, not timed (donated buffers)
    else:
        assert "error" in compiled

    # Liger's kernel is CUDA-only: on this CPU run it is skipped, not an error.
    if not torch.cuda.is_available():
        assert entry["contenders"]["liger_ce"] == {"skipped": "needs CUDA"}

    md = (tmp_path / "results.md").read_text()
    assert "forward+backward" in md and "`smooth_topk`" in md and "×" in md
    if not torch.cuda.is_available():
        assert "skipped: needs CUDA" in md
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


@pytest.mark.parametrize(
    "argv",
    [
        ["--gpu-quick", "--device", "cpu"],
        ["--dtype", "float8"],
        ["--contenders", "nope"],
        pytest.param(
            ["--device", "cuda"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
    ],
)
def test_bad_command_line_is_one_line_exit_2_nothing_written(argv, tmp_path, capsys):
    from benchmarks import run

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        run.main([*argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not out.exists()


def _entry(device, n, k, batch, fb_ratio, mem_ratio):
    stat = {"median_s": 1e-3, "ratio": fb_ratio, "ratio_iqr": 0.0}
    config = {"n": n, "k": k, "batch": batch, "device": device, "dtype": "bfloat16"}
    return {
        "config": {**config, "threads": 1},
        "contenders": {"smooth_topk": {"forward_backward": stat, "memory": {"ratio": mem_ratio}}},
    }


def test_report_checks_the_gpu_and_overhead_targets_of_issue_10():
    from benchmarks import report

    results = [
        _entry("cuda", 1000, 5, 256, 1.4, 0.9),  # k=5, n=1000: <= 1.5x
        _entry("cuda", 10000, 5, 256, 1.1, 1.2),  # k=5, n>=1e4: <= 1.0x; memory <= CE's
        _entry("cuda", 1000000, 20, 8, 2.4, 0.5),  # k=20: <= 2.5x; n=1e6 at batch 8 runs
        _entry("cpu", 100, 1, 64, 1.6, 0.5),  # CPU per-call overhead: <= 1.5x
    ]
    rows = report.targets({"metadata": {}, "results": results})
    got = [(r["where"].split()[0], r["what"].split()[0], r["target"], r["met"]) for r in rows]
    assert got == [
        ("cuda", "forward+backward", "≤ 1.5×", True),
        ("cuda", "extra", "≤ 1×", True),
        ("cuda", "forward+backward", "≤ 1×", False),
        ("cuda", "extra", "≤ 1×", False),
        ("cuda", "forward+backward", "≤ 2.5×", True),
        ("cuda", "extra", "≤ 1×", True),
        ("cuda", "forward+backward", "runs", True),
        ("cpu", "forward+backward", "≤ 1.5×", False),
    ]
