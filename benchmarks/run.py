"""Run the benchmark grid: one fresh process per configuration, then the report.

    python -m benchmarks.run                 # quick subset (default), CPU float32, 1 thread
    python -m benchmarks.run --full          # the full grid, 1 and 2 threads
    python -m benchmarks.run --device cuda --dtype float32,bfloat16 --full

Each configuration (n, k, batch, dtype, threads) runs in a fresh process of
``benchmarks.measure``: peak memory first, then the interleaved timings (see
``benchmarks/measure.py``). The results go to ``OUT/results.json`` (rewritten after each
configuration, so an interrupted run keeps what it measured), ``OUT/results.md`` and
``OUT/benchmarks.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.contenders import BASELINE, CONTENDERS, QUICK_CONTENDERS

ROOT = Path(__file__).resolve().parent.parent

QUICK = {"n": [100, 1000, 10000], "k": [1, 5, 20], "threads": [1]}
FULL = {"n": [10, 100, 1000, 10000, 100000], "k": [1, 2, 5, 10, 20], "threads": [1, 2]}
FULL_CUDA_N = [10, 100, 1000, 10000, 100000, 1000000]


def default_batch(n: int) -> int:
    """256 by default, 64 for n >= 1e5, 8 for n >= 1e6."""
    if n >= 1_000_000:
        return 8
    if n >= 100_000:
        return 64
    return 256


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    """HEAD's short hash, with ``+dirty`` when ``src/`` has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except OSError:
        return None


def _measure(args, cfg, contenders: list[str], mode: str = "all") -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.measure",
        "--mode",
        mode,
        "--n",
        str(cfg["n"]),
        "--k",
        str(cfg["k"]),
        "--batch",
        str(cfg["batch"]),
        "--device",
        cfg["device"],
        "--dtype",
        cfg["dtype"],
        "--threads",
        str(cfg["threads"]),
        "--contenders",
        ",".join(contenders),
        "--rounds",
        str(args.rounds),
        "--min-run-time",
        str(args.min_run_time),
        "--json",
    ]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cfg["threads"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
    return {"error": f"measure process exited with code {proc.returncode}: {tail}"}


def _merge(cfg, contenders, measured: dict) -> dict:
    entry = {"config": cfg, "contenders": {}}
    got = measured.get("contenders", {})
    for name in contenders:
        entry["contenders"][name] = got.get(name) or {
            "error": measured.get("error", "not measured")
        }
    entry["environment"] = measured.get("environment") or {}
    return entry


def configurations(args) -> list[dict]:
    grid = FULL if args.full else QUICK
    ns = args.n or (FULL_CUDA_N if args.full and args.device.startswith("cuda") else grid["n"])
    ks = args.k or grid["k"]
    threads = args.threads or ([1] if args.device.startswith("cuda") else grid["threads"])
    cfgs = []
    for dtype in args.dtype:
        for t in threads:
            for k in ks:
                for n in ns:
                    if not k < n:
                        continue
                    cfgs.append(
                        {
                            "n": n,
                            "k": k,
                            "batch": args.batch or default_batch(n),
                            "device": args.device,
                            "dtype": dtype,
                            "threads": t,
                        }
                    )
    return cfgs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="smoothtopk benchmark suite")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick subset (default)")
    size.add_argument("--full", action="store_true", help="the full grid")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float32", help="comma list: float32,bfloat16,float16")
    p.add_argument("--threads", type=_ints, default=None, help="comma list of CPU thread counts")
    p.add_argument("--n", type=_ints, default=None, help="comma list of class counts")
    p.add_argument("--k", type=_ints, default=None, help="comma list of k")
    p.add_argument("--batch", type=int, default=None, help="batch (default: 256/64/8 by n)")
    p.add_argument(
        "--contenders",
        default=None,
        help=f"comma list of {', '.join(CONTENDERS)} (the baseline {BASELINE} is always run)",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per config")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per timing block")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measure process")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--title", default=None, help="title of the markdown report")
    args = p.parse_args(argv)
    args.dtype = [d for d in args.dtype.split(",") if d]
    names = args.contenders.split(",") if args.contenders else list(QUICK_CONTENDERS)
    unknown = [c for c in names if c not in CONTENDERS]
    if unknown:
        p.error(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}")
    args.contenders = list(dict.fromkeys([BASELINE, *names]))
    if args.rounds is None:
        args.rounds = 5 if args.full else 3
    if args.min_run_time is None:
        args.min_run_time = 0.2 if args.full else 0.05
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = configurations(args)
    meta = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "suite": "full" if args.full else ("custom" if args.n or args.k else "quick"),
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git_commit(),
        "rounds": args.rounds,
        "min_run_time_s": args.min_run_time,
        "contenders": args.contenders,
    }
    doc = {"metadata": meta, "results": []}
    print(f"{len(cfgs)} configurations, contenders: {', '.join(args.contenders)}", flush=True)
    start = time.perf_counter()
    for i, cfg in enumerate(cfgs, 1):
        t0 = time.perf_counter()
        entry = _merge(cfg, args.contenders, _measure(args, cfg, args.contenders))
        doc["results"].append(entry)
        if entry["environment"]:
            meta["environment"] = entry["environment"]
        (out / "results.json").write_text(json.dumps(doc, indent=1))
        print(
            f"[{i}/{len(cfgs)}] {report.config_label(cfg)}: "
            f"{report.summary_line(entry)} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    meta["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    report.write(doc, out, title=args.title)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'benchmarks.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
