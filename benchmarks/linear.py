"""The fused linear + smooth top-k loss against the unfused one and cross-entropy (issue #23).

    python -m benchmarks.linear                 # the default grid (a few minutes on 2 cores)
    python -m benchmarks.linear --full          # adds d = 1024 (and C = 10^6 on CUDA)
    python -m benchmarks.linear --shapes 2048x256x50000 --k 5 --out runs/bench-linear

Per shape ``N x d x C`` (rows, hidden size, classes), in one process, four contenders each do
one ``loss.backward()`` of a linear classifier ``x (N, d) -> W (C, d)``:

* ``fused``: ``linear_smooth_topk_svm_loss(x, W, y, k=k)`` (its default chunk size);
* ``unfused``: ``smooth_topk_svm_loss(F.linear(x, W), y, k=k)``;
* ``lce_chunked``: ``F.linear_cross_entropy(x, W, y, options=LinearCrossEntropyOptions())``,
  torch's chunked path;
* ``ce``: ``F.cross_entropy(F.linear(x, W), y)``;
* on request (``--contenders``), label smoothing 0.1 (the fused loss's checkpointed road):
  ``fused_smoothing``, ``unfused_smoothing``, ``lce_smoothing`` (torch's chunked path).

**Memory**: each shape is measured in a fresh process (several shapes: one child process per
shape), the extra peak of one forward+backward over what is held just before it (the
inputs, ``x`` and ``W``; the gradients ``x.grad``, ``W.grad`` are part of the extra, as they
are in a training step), measured as :mod:`benchmarks.measure` does: ``max_memory_allocated``
on CUDA; on CPU the resident set's peak (``VmHWM``, reset through ``/proc/self/clear_refs``)
minus ``VmRSS`` before, with glibc's mmap threshold pinned to 64 KiB so that every large buffer
is its own mapping, returned when freed. Each contender is warmed up once first; the median of
two measurements is reported. **Time**: forward+backward wall time, the best of ``--repeats``
calls after the warm-up, the contenders interleaved (each round runs every contender once):
on a shared machine other processes only ever add time, so the minimum is the least noisy
estimate (the median is in ``results.json``).
Ratios are to ``unfused`` and to ``lce_chunked`` of the same process. Results: ``--out``
(``results.json`` and ``results.md``) and the table on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.measure import _mallopt, _proc_status_kib, _reset_peak_rss

CONTENDERS = ("fused", "unfused", "lce_chunked", "ce")
#: label smoothing SMOOTHING: run only when named in --contenders
SMOOTHING_CONTENDERS = ("fused_smoothing", "unfused_smoothing", "lce_smoothing")
SMOOTHING = 0.1
QUICK = ("2048x256x50000", "4096x256x10000", "4096x256x100000")
FULL = (*QUICK, "4096x1024x10000", "4096x1024x100000")
GPU_EXTRA = ("4096x256x1000000",)


def build(name: str, k: int):
    """The contender's ``loss(x, W, y)``."""
    import smoothtopk

    if name == "fused":
        return lambda x, w, y: smoothtopk.linear_smooth_topk_svm_loss(x, w, y, k=k)
    if name == "unfused":
        return lambda x, w, y: smoothtopk.smooth_topk_svm_loss(F.linear(x, w), y, k=k)
    if name == "lce_chunked":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda x, w, y: F.linear_cross_entropy(x, w, y, options=options)
    if name == "ce":
        return lambda x, w, y: F.cross_entropy(F.linear(x, w), y)
    if name == "fused_smoothing":
        return lambda x, w, y: smoothtopk.linear_smooth_topk_svm_loss(
            x, w, y, k=k, label_smoothing=SMOOTHING
        )
    if name == "unfused_smoothing":
        return lambda x, w, y: smoothtopk.smooth_topk_svm_loss(
            F.linear(x, w), y, k=k, label_smoothing=SMOOTHING
        )
    if name == "lce_smoothing":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda x, w, y: F.linear_cross_entropy(
            x, w, y, label_smoothing=SMOOTHING, options=options
        )
    known = ", ".join((*CONTENDERS, *SMOOTHING_CONTENDERS))
    raise ValueError(f"unknown contender {name!r}; one of {known}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(fn, x, w, y, device) -> None:
    x.grad = w.grad = None
    fn(x, w, y).backward()
    _sync(device)


def _extra_bytes(fn, x, w, y, device) -> int:
    """The extra peak memory of one forward+backward (module docstring)."""
    x.grad = w.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _step(fn, x, w, y, device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _proc_status_kib("VmRSS")
    _reset_peak_rss()
    fn(x, w, y).backward()
    return max(0, (_proc_status_kib("VmHWM") - before) * 1024)


def measure_shape(shape: str, k: int, repeats: int, device, names) -> dict:
    """Memory, then time, of every contender at one ``NxDxC`` shape."""
    n, d, c = (int(v) for v in shape.split("x"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    w = (torch.randn(c, d, generator=gen) / d**0.5).to(device).requires_grad_()
    y = torch.randint(0, c, (n,), generator=gen).to(device)
    fns = {name: build(name, k) for name in names}
    results = {name: {} for name in names}
    if device.type == "cpu":
        _mallopt(64 * 1024)
    for name, fn in fns.items():
        _step(fn, x, w, y, device)  # warm-up: lazy initialisation is not the loss's memory
        samples = [_extra_bytes(fn, x, w, y, device) for _ in range(2)]
        results[name]["memory_bytes"] = int(statistics.median(samples))
    if device.type == "cpu":
        _mallopt(32 * 1024 * 1024)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            _step(fn, x, w, y, device)
            times[name].append(time.perf_counter() - start)
    for name in names:
        results[name]["seconds"] = min(times[name])
        results[name]["median_seconds"] = statistics.median(times[name])
    return {"shape": {"N": n, "d": d, "C": c, "k": k}, "results": results}


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if b else "-"


def markdown(rows: list[dict]) -> str:
    """One line per shape and contender: MiB, seconds, and both ratios."""
    lines = [
        "| N | d | C | contender | peak extra (MiB) | vs unfused | vs lce_chunked "
        "| time (s) | vs unfused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shape, res = row["shape"], row["results"]
        base, lce = res.get("unfused", {}), res.get("lce_chunked", {})
        for name, r in res.items():
            mem, sec = r["memory_bytes"], r["seconds"]
            lines.append(
                f"| {shape['N']} | {shape['d']} | {shape['C']} | {name} | {mem / 2**20:.0f} "
                f"| {_ratio(mem, base.get('memory_bytes'))} "
                f"| {_ratio(mem, lce.get('memory_bytes'))} | {sec:.3f} "
                f"| {_ratio(sec, base.get('seconds'))} |"
            )
    return "\n".join(lines)


def environment(device) -> dict:
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "?").strip()
    return f"{model}, {os.cpu_count()} CPUs"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.linear", description=__doc__.split(
        "\n")[0])  # fmt: skip
    p.add_argument("--shapes", help="comma-separated NxDxC (default: the quick grid)")
    p.add_argument("--full", action="store_true", help="the full grid")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--out", type=Path, help="directory for results.json and results.md")
    p.add_argument("--row-json", help=argparse.SUPPRESS)  # internal: one shape's row, as JSON
    return p.parse_args(argv)


def _in_own_process(shape: str, args) -> dict:
    """One shape measured by a fresh ``python -m benchmarks.linear`` process: the resident-set
    peak of a shape is then not lowered by memory an earlier shape freed but kept mapped."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, "-m", "benchmarks.linear", "--shapes", shape, "--k",
                   str(args.k), "--repeats", str(args.repeats), "--device", args.device,
                   "--contenders", args.contenders, "--row-json", str(out)]  # fmt: skip
        subprocess.run(command, cwd=root, check=True)
        return json.loads(out.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.shapes:
        shapes = args.shapes.split(",")
    else:
        shapes = list(FULL if args.full else QUICK)
        if args.full and device.type == "cuda":
            shapes += GPU_EXTRA
    names = args.contenders.split(",")
    if args.row_json:  # one shape, for the parent process (_in_own_process)
        row = measure_shape(shapes[0], args.k, args.repeats, device, names)
        Path(args.row_json).write_text(json.dumps(row))
        return 0
    if len(shapes) == 1:
        rows = [measure_shape(shapes[0], args.k, args.repeats, device, names)]
    else:
        rows = [_in_own_process(s, args) for s in shapes]
    table = markdown(rows)
    env = environment(device)
    print(f"{env}\n\n{table}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
        (args.out / "results.md").write_text(f"{env}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
