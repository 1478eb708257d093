"""The GPU check's plan: ordered steps, each with a time budget computed from measured compile
times, and the runner that keeps to them (issue #20, item 4; ``benchmarks/gpu_check.sh``).

    python -m benchmarks.gpu_plan --dry-run              # the steps, budgets, total <= 480 s
    python -m benchmarks.gpu_plan run --out DIR --deadline EPOCH   # on the GPU (gpu_check.sh)

**Steps, in order.**

1. ``prepare`` (in parallel, stopped at its budget): one warm process per benchmark
   configuration (``benchmarks.measure --mode time --rounds 1``, the same code path as the
   timed processes: every Triton kernel of ours and of Liger, and ``torch.compile``'s
   cross-entropy graphs, compiled once into the on-disk caches), ``WARM_WORKERS`` at a time;
   beside them the fused C++ CPU kernel's build and then the CUDA tests (``pytest tests -k
   cuda -n TEST_WORKERS``), which compile their own kernels. Nothing is timed while this runs.
2. ``bench`` steps, one configuration each, most informative first (:data:`ORDER`: k = 5 at
   n = 1000 and 10^4, then k = 1, k = 20, then n = 10^6; float32, then bfloat16), each a fresh
   process of ``benchmarks.measure`` stopped at its budget; ``results.json`` is rewritten after
   each, so a stop keeps what was measured.

**Budgets** (seconds on the GPU machine; :func:`plan`). ``S`` = :data:`COMPILE_SCALE` turns a
compile time measured here into one there. Triton compile times are ``report.json`` of
``benchmarks.sm90_report`` (each compile's wall time on this machine, the shapes that launch
it); the host figures are in :data:`HOST` (measured here, dated). With ``c(cfg)`` the sum of the
Triton compile times of a configuration's kernels:

* warm process of ``cfg``: ``start + ce_cold + liger_cold + S c(cfg) + hot_run``; the warm
  phase is the longest-processing-time schedule of those on ``WARM_WORKERS`` workers;
* tests: ``cpp_build + S T / TEST_WORKERS + tests_run``, ``T`` the compile times of the
  tests' kernels (the exactness grid's forward and backward per (n, k), each costed as the
  measured kernel of the nearest k at or above it: an upper bound, blocks there are larger);
* ``prepare`` = ``MARGIN`` x the longer of the two;
* one bench step: ``MARGIN`` x (``start + ce_warm + liger_warm + hot_run``) with caches warm.

The steps are taken in order while their budgets fit the total (:data:`TOTAL`, 480 s, less
the environment and summary steps of the shell script); the rest are listed as not planned,
and run (in order) only if earlier steps finish early and time is left before the deadline.

**Assumed, not measured** (the first GPU run checks them: the runner writes each step's
actual seconds beside its budget into ``steps.json``): ``S = 1`` (a core of the 16-core GPU
host compiles at least as fast as one of this shared 2-vCPU EPYC; the times here were taken
under load from other sessions; Triton 3.6 there, :data:`HOST`'s Triton here); CUDA start-up
and the timed part of a configuration (:data:`HOST` ``cuda_init_s``, ``hot_run_s``); Liger's
compile; that parallel compiles do not slow each other on 16 cores.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "benchmarks" / "results" / "sm90" / "report.json"
#: the whole check's hard limit (issue #20: a GPU loan's 8 minutes, compiles included)
TOTAL = 480.0
#: seconds kept for gpu_check.sh's environment step before, and its summary after, the plan
ENV_S, SUMMARY_S = 20.0, 15.0
MARGIN = 1.3
COMPILE_SCALE = float(os.environ.get("GPU_COMPILE_SCALE", "1.0"))
WARM_WORKERS, TEST_WORKERS = 6, 4
#: the benchmark configurations (batch by n as benchmarks.run), most informative first
ORDER = [(1000, 5), (10_000, 5), (1000, 1), (10_000, 1), (1000, 20), (10_000, 20),
         (1_000_000, 5), (1_000_000, 1), (1_000_000, 20)]  # fmt: skip
DTYPES = ("float32", "bfloat16")
#: every step's contenders; ``ce_compiled`` (a ``torch.compile`` per process: 22 s with warm
#: caches, measured) only in the steps of COMPILED
CONTENDERS = "cross_entropy,liger_ce,smooth_topk,smooth_topk_pytorch"
COMPILED = {(1000, 5, "float32"), (10_000, 5, "float32")}
ROUNDS, MIN_RUN_TIME = 3, 0.03
#: host figures in seconds, measured on the machine of report.json (2026-12-03, commands in
#: docs/benchmarks.md) unless marked assumed
HOST = {
    "start_s": 5.7,  # python -m benchmarks.measure until its first contender (import torch, ...)
    "cuda_init_s": 3.0,  # assumed: CUDA context, cuBLAS handles
    "ce_cold_s": 48.0,  # ce_compiled in a measure process, empty caches (37 s + a second build)
    "ce_warm_s": 22.0,  # the same with the caches filled (26.0 s - 3.9 s without it)
    "liger_cold_s": 10.0,  # assumed: its import and its one Triton kernel
    "liger_warm_s": 3.0,  # assumed
    "contender_run_s": 1.3,  # per contender: 3 rounds x 3 ops of 0.03 s blocks, memory phase
    "cpp_build_s": 57.0,  # the fused CPU kernel's build, smoothtopk.backends.cpu.load()
    "tests_run_s": 60.0,  # assumed: the CUDA tests' own work besides compiles
}


def contenders(n: int, k: int, dtype: str) -> list[str]:
    names = CONTENDERS.split(",")
    return names[:1] + ["ce_compiled"] + names[1:] if (n, k, dtype) in COMPILED else names


def batch_of(n: int) -> int:
    """``benchmarks.run.default_batch`` (copied: the plan needs no torch; a test keeps them
    equal)."""
    return 8 if n >= 1_000_000 else 64 if n >= 100_000 else 256


#: the exactness grid's sizes and k's (``tests/exactness_grid.py``; a test keeps them equal)
GRID_SIZES, GRID_KS = (2, 3, 4, 6, 9, 20, 100, 1000), (1, 2, 3, 5, 10)


def load_report(path: Path = REPORT) -> list[dict]:
    return json.loads(Path(path).read_text())["compiles"]


def compile_seconds(report: list[dict], n: int, k: int, dtype: str) -> float:
    """Triton compile seconds (here) of the kernels one forward+backward at ``(n, k)`` needs;
    a dtype the report lacks is costed as its float32 compiles."""
    tag = f"B={batch_of(n)} n={n} "
    have = {c["dtype"] for c in report}
    dtype = dtype if dtype in have else "float32"
    used = [c for c in report if c["dtype"] == dtype and c["k"] == k
            and any(s.startswith(tag) for s in c["shapes"])]  # fmt: skip
    if not used:
        raise ValueError(f"report.json has no compile for n={n} k={k} {dtype}")
    return sum(c["compile_s"] for c in used)


def test_compile_seconds(report: list[dict]) -> float:
    """The CUDA tests' Triton compiles: forward and backward per (n, k) of the exactness grid
    (one program per row), costed as the measured single-row kernels of the nearest k >= it."""
    single = {}
    for c in report:
        if c["dtype"] == "float32" and any("splits=1" in s for s in c["shapes"]):
            single[c["k"]] = single.get(c["k"], 0.0) + c["compile_s"]
    measured = sorted(single)
    total = 0.0
    for n in GRID_SIZES:
        for k in GRID_KS:
            if k < n:
                total += single[next(m for m in measured if m >= k)]
    return total


def _makespan(durations: list[float], workers: int) -> float:
    """Longest-processing-time-first schedule of ``durations`` on ``workers``."""
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)


def _costs(report: list[dict], scale: float, n: int, k: int, dtype: str) -> tuple[float, float]:
    """``(warm process, bench process with warm caches)`` seconds of one configuration."""
    h = HOST
    names = contenders(n, k, dtype)
    compiled = "ce_compiled" in names
    base = h["start_s"] + h["cuda_init_s"] + h["contender_run_s"] * len(names)
    warm = base + h["liger_cold_s"] + scale * compile_seconds(report, n, k, dtype)
    hot = base + h["liger_warm_s"]
    return warm + compiled * h["ce_cold_s"], hot + compiled * h["ce_warm_s"]


def plan(report: list[dict], total: float = TOTAL, scale: float = COMPILE_SCALE) -> dict:
    """The ordered steps with their budgets (see the module docstring): the most
    configurations, in :data:`ORDER`, whose prepare and bench steps fit the total."""
    h = HOST
    configs = [(n, k, dtype) for dtype in DTYPES for n, k in ORDER]
    costs = [_costs(report, scale, *c) for c in configs]
    tests_compile = test_compile_seconds(report)
    tests_s = h["cpp_build_s"] + scale * tests_compile / TEST_WORKERS + h["tests_run_s"]
    available = total - ENV_S - SUMMARY_S
    for count in range(len(configs), -1, -1):
        warm_s = _makespan([warm for warm, _ in costs[:count]], WARM_WORKERS)
        prepare_s = round(MARGIN * max(warm_s, tests_s))
        bench = [round(MARGIN * hot) for _, hot in costs[:count]]
        if prepare_s + sum(bench) <= available or count == 0:
            break
    prepare = {"step": "prepare", "budget_s": prepare_s, "warm": count,
               "detail": f"warm the {count} planned configurations on {WARM_WORKERS} workers "
               f"(~{warm_s:.0f} s); C++ build, then the CUDA tests on {TEST_WORKERS} workers "
               f"(~{tests_s:.0f} s, {tests_compile:.0f} s of Triton compiles here)"}  # fmt: skip
    steps, spare = [prepare], []
    for index, ((n, k, dtype), (_, hot)) in enumerate(zip(configs, costs, strict=True)):
        step = {
            "step": "bench",
            "n": n,
            "k": k,
            "batch": batch_of(n),
            "dtype": dtype,
            "contenders": contenders(n, k, dtype),
            "budget_s": round(MARGIN * hot),
            "cold_compile_s": round(scale * compile_seconds(report, n, k, dtype), 1),
        }
        (steps if index < count else spare).append(step)  # fmt: skip
    return {
        "total_s": total,
        "environment_s": ENV_S,
        "summary_s": SUMMARY_S,
        "planned_s": ENV_S + sum(s["budget_s"] for s in steps) + SUMMARY_S,
        "compile_scale": scale,
        "margin": MARGIN,
        "host": h,
        "steps": steps,
        "not_planned": spare,
    }


def describe(p: dict) -> str:
    lines = [f"GPU check plan: at most {p['total_s']:.0f} s (compile scale {p['compile_scale']},"
             f" margin {p['margin']})", f"  {'env':>7}  {p['environment_s']:5.0f} s  "
             "environment (gpu_check.sh)"]  # fmt: skip
    clock = p["environment_s"]
    for s in p["steps"]:
        clock += s["budget_s"]
        label = s.get("detail") or (
            f"n={s['n']} k={s['k']} batch={s['batch']} {s['dtype']} "
            f"(cold, its Triton compiles alone: {s['cold_compile_s']} s)"
        )
        lines.append(f"  {s['step']:>7}  {s['budget_s']:5.0f} s  by {clock:4.0f} s  {label}")
    lines.append(f"  {'summary':>7}  {p['summary_s']:5.0f} s  (gpu_check.sh)")
    lines.append(f"planned total: {p['planned_s']:.0f} s <= {p['total_s']:.0f} s")
    for s in p["not_planned"]:
        lines.append(f"  not planned (run if time is left): n={s['n']} k={s['k']} {s['dtype']}")
    return "\n".join(lines)


# --- the runner (on the GPU machine) ----------------------------------------------------------


def _measure_cmd(n, k, dtype, rounds, min_run_time, mode="all") -> list[str]:
    names = ",".join(contenders(n, k, dtype))
    return [sys.executable, "-m", "benchmarks.measure", "--mode", mode, "--n", str(n),
            "--k", str(k), "--batch", str(batch_of(n)), "--device", "cuda", "--dtype", dtype,
            "--threads", "1", "--contenders", names, "--rounds", str(rounds),
            "--min-run-time", str(min_run_time), "--json"]  # fmt: skip


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _prepare(step: dict, out: Path, deadline: float) -> dict:
    """Warm processes (``WARM_WORKERS`` at a time) beside the C++ build and the CUDA tests,
    all stopped when the step's budget is spent."""
    stop = min(time.time() + step["budget_s"], deadline)
    configs = [(n, k, d) for d in DTYPES for n, k in ORDER]  # the planned ones first
    queue = [_measure_cmd(n, k, d, 1, 0.001, mode="time") for n, k, d in configs]
    tests_k = os.environ.get("GPU_TESTS_K", "cuda")
    tests = (
        f"{sys.executable} -c 'import smoothtopk; smoothtopk.backends.cpu.load()' && "
        f"{sys.executable} -m pytest -q -rfEs --maxfail=10 -p no:cacheprovider "
        f"-n {TEST_WORKERS} tests -k '{tests_k}'"
    )
    log = (out / "gpu_tests.log").open("w")
    warm_log = (out / "warm.log").open("w")
    test_proc = subprocess.Popen(tests, shell=True, cwd=ROOT, env=_env(), stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    running: list[subprocess.Popen] = []
    warmed = 0
    while time.time() < stop and (queue or running or test_proc.poll() is None):
        for proc in [p for p in running if p.poll() is not None]:
            running.remove(proc)
            warmed += proc.returncode == 0
        while queue and len(running) < WARM_WORKERS:
            running.append(subprocess.Popen(queue.pop(0), cwd=ROOT, env=_env(), stdout=warm_log,
                                            stderr=subprocess.STDOUT))  # fmt: skip
        time.sleep(0.5)
    for proc in running:
        proc.kill()
    tests_rc = test_proc.poll()
    if tests_rc is None:
        os.killpg(test_proc.pid, 9)
        tests_rc = "stopped at the budget"
    log.close()
    warm_log.close()
    return {"warmed": warmed, "warm_total": len(configs), "warm_not_started": len(queue),
            "tests_exit": tests_rc}  # fmt: skip


def run(p: dict, out: Path, deadline: float) -> int:
    from benchmarks import report
    from benchmarks.run import _merge

    out.mkdir(parents=True, exist_ok=True)
    every = ["cross_entropy", "ce_compiled", *CONTENDERS.split(",")[1:]]
    doc = {"metadata": {"suite": "gpu_check", "contenders": every, "rounds": ROUNDS,
                        "min_run_time_s": MIN_RUN_TIME, "not_run": []}, "results": []}  # fmt: skip
    log = {"plan": p, "steps": []}
    for step in p["steps"] + p["not_planned"]:
        left = deadline - time.time()
        if left < min(step["budget_s"], 30):
            if step["step"] == "bench":
                doc["metadata"]["not_run"].append(_label(step))
            continue
        began = time.time()
        if step["step"] == "prepare":
            print(f"== prepare: budget {step['budget_s']} s: {step['detail']}", flush=True)
            outcome = _prepare(step, out, deadline)
        else:
            limit = min(step["budget_s"], left)
            cfg = {"n": step["n"], "k": step["k"], "batch": step["batch"], "device": "cuda",
                   "dtype": step["dtype"], "threads": 1}  # fmt: skip
            measured = _bench(cfg, limit)
            entry = _merge(cfg, step["contenders"], measured)
            doc["results"].append(entry)
            if entry["environment"]:
                doc["metadata"]["environment"] = entry["environment"]
            (out / "results.json").write_text(json.dumps(doc, indent=1))
            outcome = {"summary": report.summary_line(entry)}
        seconds = round(time.time() - began, 1)
        log["steps"].append({**step, "seconds": seconds, **outcome})
        (out / "steps.json").write_text(json.dumps(log, indent=1))
        print(f"{_label(step)}: {seconds} s of {step['budget_s']} s: {outcome}", flush=True)
    if doc["results"]:
        report.write(doc, out, title="smoothtopk GPU benchmarks (gpu_check.sh)")
    return 0


def _label(step: dict) -> str:
    if step["step"] != "bench":
        return step["step"]
    return f"bench n={step['n']} k={step['k']} batch={step['batch']} {step['dtype']}"


def _bench(cfg: dict, limit: float) -> dict:
    cmd = _measure_cmd(cfg["n"], cfg["k"], cfg["dtype"], ROUNDS, MIN_RUN_TIME)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"stopped at its budget of {limit:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
    return {"error": f"measure process exited with code {proc.returncode}: {tail}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_plan",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("action", nargs="?", default="show", choices=["show", "run"])
    parser.add_argument("--dry-run", action="store_true", help="print the plan (= show)")
    parser.add_argument("--json", action="store_true", help="the plan as JSON")
    parser.add_argument("--report", type=Path, default=REPORT, help="sm90_report's report.json")
    parser.add_argument("--total", type=float, default=TOTAL, help="seconds for the whole check")
    parser.add_argument("--out", type=Path, default=None, help="results folder (run)")
    parser.add_argument("--deadline", type=float, default=None, help="epoch seconds (run)")
    args = parser.parse_args(argv)
    p = plan(load_report(args.report), total=args.total)
    if args.action == "show" or args.dry_run:
        print(json.dumps(p, indent=1) if args.json else describe(p))
        return 0 if p["planned_s"] <= p["total_s"] else 1
    if args.out is None:
        parser.error("run needs --out")
    deadline = args.deadline or time.time() + args.total - ENV_S - SUMMARY_S
    print(describe(p), flush=True)
    return run(p, args.out, deadline)


if __name__ == "__main__":
    sys.exit(main())
