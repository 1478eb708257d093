"""Run the benchmark grid: one fresh process per configuration, then the report.

    python -m benchmarks.run                 # quick subset (default), CPU float32, 1 thread
    python -m benchmarks.run --full          # the full CPU grid, 1 and 2 threads
    python -m benchmarks.run --overhead      # per-call overhead: batch 64, 100 classes, k=1,5
    python -m benchmarks.run --device cuda   # the GPU grid of issue #10, float32 and bfloat16
    python -m benchmarks.run --gpu-quick     # its reduced version (about 5 minutes on an H200)

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
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.contenders import BASELINE, CONTENDERS, suite
from benchmarks.measure import DTYPES
from smoothtopk.experiments.records import cpu_model

ROOT = Path(__file__).resolve().parent.parent

_F32, _BOTH = ["float32"], ["float32", "bfloat16"]
# Each suite: its grid and its timing defaults; the contenders of a suite are marked in the
# table of benchmarks.contenders. A flag picks the suite; --n, --k, ... override its fields.
SUITES = {
    "quick": {"n": [100, 1000, 10000], "k": [1, 5, 20], "threads": [1], "dtype": _F32,
              "rounds": 3, "min_run_time": 0.05, "timeout": 900},
    "full": {"n": [10, 100, 1000, 10000, 100000], "k": [1, 2, 5, 10, 20], "threads": [1, 2],
             "dtype": _F32, "rounds": 5, "min_run_time": 0.2, "timeout": 900},
    "overhead": {"n": [100], "k": [1, 5], "batch": 64, "threads": [1], "dtype": _F32,
                 "rounds": 7, "min_run_time": 0.2, "timeout": 900},
    "gpu": {"n": [1000, 10000, 100000, 1000000], "k": [1, 5, 20], "threads": [1],
            "dtype": _BOTH, "rounds": 5, "min_run_time": 0.1, "timeout": 900},
    "gpu-quick": {"n": [1000, 10000, 1000000], "k": [1, 5, 20], "threads": [1],
                  "dtype": _BOTH, "rounds": 3, "min_run_time": 0.03, "timeout": 150},
    "gpu-full": {"n": [10, 100, 1000, 10000, 100000, 1000000], "k": [1, 2, 5, 10, 20],
                 "threads": [1], "dtype": _BOTH, "rounds": 5, "min_run_time": 0.2,
                 "timeout": 900},
}  # fmt: skip


def default_batch(n: int) -> int:
    """256 by default, 64 for n >= 1e5, 8 for n >= 1e6."""
    if n >= 1_000_000:
        return 8
    if n >= 100_000:
        return 64
    return 256


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v]


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
    """The grid of the suite with the command line's overrides, ``k < n`` only, ordered by
    k, then n, dtype and threads (an interrupted run has every n of the first k's)."""
    grid = SUITES[args.suite]
    cfgs = []
    for k in args.k or grid["k"]:
        for n in args.n or grid["n"]:
            for dtype in args.dtype or grid["dtype"]:
                for t in args.threads or grid["threads"]:
                    if k < n:
                        batch = args.batch or grid.get("batch") or default_batch(n)
                        cfg = {"n": n, "k": k, "batch": batch, "device": args.device}
                        cfgs.append({**cfg, "dtype": dtype, "threads": t})
    return cfgs


def _suites_help() -> str:
    lines = [
        "suites (flag, or none: quick on cpu, gpu on cuda; cuda: --quick/--gpu-quick is",
        "gpu-quick, --full is gpu-full) and the contenders each runs by default:",
    ]
    for name, grid in SUITES.items():
        batch = grid.get("batch", "256/64/8 by n")
        lines.append(
            f"  {name}: n={grid['n']} k={grid['k']} batch {batch} {','.join(grid['dtype'])} "
            f"threads={grid['threads']} rounds={grid['rounds']} blocks {grid['min_run_time']} s"
        )
        lines.append(f"    {', '.join(suite(name))}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit status 2, nothing written
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m benchmarks.run",
        description="smoothtopk benchmark suite: times and peak memory as ratios to "
        "F.cross_entropy, one fresh process per configuration (docs/benchmarks.md)",
        epilog=_suites_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick grid (the default)")
    size.add_argument("--full", action="store_true", help="the full grid")
    size.add_argument("--overhead", action="store_true", help="the per-call overhead grid")
    size.add_argument("--gpu-quick", action="store_true", help="= --device cuda --quick")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu; cuda for --gpu-quick)")
    p.add_argument("--dtype", default=None, help="comma list: float32,bfloat16,float16")
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
    p.add_argument("--timeout", type=float, default=None, help="seconds per measure process")
    p.add_argument("--budget", type=float, default=None, help="start no config after S seconds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--title", default=None, help="title of the markdown report")
    return p


def _suite(p, args) -> str:
    cuda = args.device.startswith("cuda")
    if args.gpu_quick and not cuda:
        p.error("--gpu-quick is the reduced CUDA grid; use it with --device cuda")
    if cuda and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here (torch {torch.__version__})")
    if args.overhead:
        return "overhead"
    if args.full:
        return "gpu-full" if cuda else "full"
    if cuda:
        return "gpu-quick" if args.quick or args.gpu_quick else "gpu"
    return "quick"


def parse_args(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if args.gpu_quick else "cpu")
    args.suite = _suite(p, args)
    args.dtype = [d for d in args.dtype.split(",") if d] if args.dtype else None
    unknown = [d for d in args.dtype or [] if d not in DTYPES]
    if unknown:
        p.error(f"unknown dtype {unknown}; known: {', '.join(DTYPES)}")
    names = args.contenders.split(",") if args.contenders else suite(args.suite)
    unknown = [c for c in names if c not in CONTENDERS]
    if unknown:
        p.error(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}")
    args.contenders = list(dict.fromkeys([BASELINE, *names]))
    for field in ("rounds", "min_run_time", "timeout"):
        if getattr(args, field) is None:
            setattr(args, field, SUITES[args.suite][field])
    return args


def _metadata(args, argv) -> dict:
    return {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "suite": "custom" if args.n or args.k else args.suite,
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git_commit(),
        "rounds": args.rounds,
        "min_run_time_s": args.min_run_time,
        "contenders": args.contenders,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = configurations(args)
    meta = _metadata(args, argv)
    doc = {"metadata": meta, "results": []}
    print(f"{len(cfgs)} configurations, contenders: {', '.join(args.contenders)}", flush=True)
    start = time.perf_counter()
    # What is still to run, kept in results.json, so that a stopped run says what it lacks.
    meta["not_run"] = [report.config_label(c) for c in cfgs]
    for i, cfg in enumerate(cfgs, 1):
        if args.budget is not None and time.perf_counter() - start > args.budget:
            print(f"budget of {args.budget:g} s spent: {len(cfgs) - i + 1} not run", flush=True)
            break
        t0 = time.perf_counter()
        entry = _merge(cfg, args.contenders, _measure(args, cfg, args.contenders))
        doc["results"].append(entry)
        meta["not_run"].pop(0)
        if entry["environment"]:
            meta["environment"] = entry["environment"]
        (out / "results.json").write_text(json.dumps(doc, indent=1))
        print(
            f"[{i}/{len(cfgs)}] {report.config_label(cfg)}: "
            f"{report.summary_line(entry)} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    meta["seconds"] = round(time.perf_counter() - start, 1)
    if not meta["not_run"]:
        del meta["not_run"]
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    written = report.write(doc, out, title=args.title)
    print(f"wrote {', '.join(str(path) for path in [out / 'results.json', *written])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
