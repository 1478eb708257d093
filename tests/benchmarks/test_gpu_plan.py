"""The GPU check's plan (issue #20 item 4) and the sm_90 report's arithmetic, without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_plan, sm90_report

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_orders_the_steps_and_fits_480_seconds():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    benches = [line for line in lines if line.strip().startswith("bench")]
    assert "n=1000 k=5 " in benches[0] and "n=10000 k=5 " in benches[1]
    assert "k=1 " in benches[2] and "k=20 " in benches[4]
    planned = [line for line in lines if line.startswith("planned total")][0]
    assert int(planned.split()[2]) <= 480
    assert "prepare" in proc.stdout and "environment" in proc.stdout


def test_the_plan_is_computed_from_the_measured_report():
    report = gpu_plan.load_report()
    plan = gpu_plan.plan(report)
    assert plan["planned_s"] <= gpu_plan.TOTAL
    steps = plan["steps"]
    assert steps[0]["step"] == "prepare" and len(steps) > 3
    order = [(s["n"], s["k"], s["dtype"]) for s in steps[1:] + plan["not_planned"]]
    assert order[:2] == [(1000, 5, "float32"), (10_000, 5, "float32")]
    assert len(order) == 18 and order.index((1_000_000, 5, "float32")) > order.index(
        (10_000, 20, "float32")
    )
    # a slower compiling machine: a longer prepare step, no more configurations
    slow = gpu_plan.plan(report, scale=3.0)
    assert slow["steps"][0]["budget_s"] > steps[0]["budget_s"]
    assert len(slow["steps"]) <= len(steps) and slow["planned_s"] <= gpu_plan.TOTAL
    # every configuration's kernels are in the report
    for n, k in gpu_plan.ORDER:
        assert gpu_plan.compile_seconds(report, n, k, "float32") > 0


def test_the_plan_copies_stay_equal_to_their_sources():
    from benchmarks.run import default_batch

    from exactness_grid import KS, SIZES

    assert (gpu_plan.GRID_SIZES, gpu_plan.GRID_KS) == (SIZES, KS)
    for n in (1000, 10_000, 100_000, 10**6):
        assert gpu_plan.batch_of(n) == default_batch(n)


def test_the_runner_writes_as_it_goes_and_keeps_to_the_deadline(tmp_path, monkeypatch):
    plan = gpu_plan.plan(gpu_plan.load_report())
    prepared, measured = [], []
    monkeypatch.setattr(
        gpu_plan, "_prepare", lambda step, out, deadline: prepared.append(1) or {"tests_exit": 0}
    )

    def bench(cfg, limit):
        measured.append((cfg["n"], cfg["k"], cfg["dtype"]))
        return {"contenders": {"cross_entropy": {}}}

    monkeypatch.setattr(gpu_plan, "_bench", bench)
    import time

    assert gpu_plan.run(plan, tmp_path, deadline=time.time() + 1e4) == 0
    assert prepared == [1] and len(measured) == 18  # time left: the unplanned ones too
    steps = json.loads((tmp_path / "steps.json").read_text())["steps"]
    assert steps[0]["step"] == "prepare" and all("seconds" in s for s in steps)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["results"]) == 18 and (tmp_path / "results.md").exists()
    measured.clear()
    assert gpu_plan.run(plan, tmp_path / "late", deadline=time.time() + 5) == 0
    assert measured == []  # nothing starts that its deadline cannot hold
    late = (
        json.loads((tmp_path / "late" / "steps.json").read_text())
        if (tmp_path / "late" / "steps.json").exists()
        else {"steps": []}
    )
    assert all(s["step"] != "bench" for s in late["steps"])


@pytest.mark.parametrize(
    "registers,shared,warps,blocks,limit",
    [(168, 4096, 4, 3, "registers"), (255, 0, 4, 2, "registers"), (24, 0, 4, 16, "warps"),
     (32, 100 * 1024, 4, 2, "shared"), (16, 0, 1, 32, "blocks")],
)  # fmt: skip
def test_occupancy_on_an_sm90_multiprocessor(registers, shared, warps, blocks, limit):
    result = sm90_report.occupancy(registers, shared, warps)
    assert (result["blocks"], result["limit"]) == (blocks, limit)
    assert result["warps_per_sm"] == blocks * warps


def test_the_report_compiles_what_the_launcher_launches():
    """The launcher's shapes: one program per row at n = 1000, split rows beyond; k = 20 and
    32 share BLOCK = 128."""
    pytest.importorskip("triton")
    kinds = {(c["kernel"], c["k"]) for c in sm90_report.plan(ks=(5, 20))}
    assert ("forward_row_kernel", 5) in kinds and ("finish_kernel", 20) in kinds
    assert sm90_report.splits_for(256, 1000, 5) == 1
    assert sm90_report.splits_for(256, 10_000, 5) == 2
    assert sm90_report.splits_for(8, 10**6, 5) == 33
    assert len(sm90_report.plan()) == 36
