"""Measure one configuration in this (fresh) process and print one JSON line.

    python -m benchmarks.measure --mode time --n 1000 --k 5 --batch 256 --threads 1 \
        --contenders cross_entropy,smooth_topk --json

``--mode time``: forward, backward and forward+backward times of every contender with
``torch.utils.benchmark.Timer.blocked_autorange``. The contenders are interleaved: each round
times every (operation, contender) pair once, in an order rotated from round to round, so slow
drifts of the machine (other processes on shared cores) hit every contender alike. Each time is
reported as median and inter-quartile range over all blocks of all rounds, and as a ratio to the
``F.cross_entropy`` baseline of the same process: the median over rounds of the per-round ratio
of medians, with the IQR of those per-round ratios as its spread.

Each contender is built and called once (forward+backward) before anything is timed, which is
where ``torch.compile`` and Triton's JIT compile, and gets its own copy of the scores ``x``
(Liger's cross-entropy overwrites its input with the gradient). On CUDA the timer's clock
synchronises the device, so a block's time includes the kernels its calls queued.

* forward: ``fn(x, y)`` with ``x.requires_grad`` (the autograd graph is built, as in training);
* backward: ``torch.autograd.grad(loss, x, retain_graph=True)`` on a loss built once;
* forward+backward: ``torch.autograd.grad(fn(x, y), x)``.

``--mode memory`` (run first by the default ``--mode all``): the extra peak memory of one
forward+backward (``loss.backward()``, which also allocates ``x.grad``) over the memory held
just before it (inputs, built contender).
On CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
``memory_allocated`` before. On CPU there is no allocator counter, so the process's resident set
is read from ``/proc/self/status``: the peak (``VmHWM``) is reset by writing ``5`` to
``/proc/self/clear_refs`` just before the forward, and the extra is ``VmHWM - VmRSS(before)``.
For this to see every buffer, glibc's mmap threshold is pinned to 64 KiB
(``mallopt(M_MMAP_THRESHOLD)``) during the memory phase, so that every large buffer is a fresh
``mmap`` returned to the system when freed, instead of reused heap pages that were resident
before; it is then raised to 32 MiB (glibc's own ceiling for its dynamic threshold) for the
timing phase, so that timed calls reuse heap memory as they do in a long-running process. The
figure has page (4 KiB) granularity; each contender is warmed up twice and measured three
times, the median is reported.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import statistics
import sys
import time
import timeit
import traceback

import torch

from benchmarks.contenders import BASELINE, Skipped, build

OPS = ("forward", "backward", "forward_backward")

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _error(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(msg.split())[:500]


def _quantiles(values):
    values = sorted(values)
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def _inputs(args, device, dtype):
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, args.n, generator=g).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    y = torch.randint(0, args.n, (args.batch,), generator=g).to(device)
    return x, y


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device):
    """The timer's clock: on CUDA it synchronises the device first, so that a block's time
    includes the kernels its calls queued (``torch.utils.benchmark``'s default does the same
    for any accelerator; explicit here so that CPU runs never wait on a GPU)."""
    if device.type != "cuda":
        return timeit.default_timer

    def clock():
        torch.cuda.synchronize(device)
        return timeit.default_timer()

    return clock


def _failure(exc: BaseException) -> dict:
    """A contender that does not apply here is skipped; any other exception is an error."""
    if isinstance(exc, Skipped):
        return {"skipped": str(exc)}
    return {"error": _error(exc)}


def _own_copy(x: torch.Tensor) -> torch.Tensor:
    # Each contender gets its own scores: Liger's cross-entropy writes its gradient into them.
    return x.detach().clone().requires_grad_(True)


def _build_all(names, args, device, dtype, x, y):
    """Build each contender on its own copy of ``x`` and run one forward+backward, untimed
    (``torch.compile`` and Triton's JIT compile here); return ``(fns, inputs, failures)``."""
    fns, inputs, failures = {}, {}, {}
    for name in names:
        try:
            xi = _own_copy(x)
            fn = build(name, args.n, args.k, device, dtype)
            loss = fn(xi, y)
            if loss.dim() != 0:
                raise RuntimeError(f"expected a scalar loss, got shape {tuple(loss.shape)}")
            torch.autograd.grad(loss, xi)
            _sync(device)
            fns[name], inputs[name] = fn, xi
        except Exception as exc:  # noqa: BLE001 - any failure is a result to report
            failures[name] = _failure(exc)
        gc.collect()
    return fns, inputs, failures


def _statements(fn, x, y):
    def forward():
        return fn(x, y)

    def forward_backward():
        return torch.autograd.grad(fn(x, y), x)

    loss = fn(x, y)

    def backward():
        return torch.autograd.grad(loss, x, retain_graph=True)

    return {"forward": forward, "backward": backward, "forward_backward": forward_backward}


def _time_rounds(stmts, args, device, untimed=()):
    """Interleaved rounds, leaving out the ``(name, op)`` pairs in ``untimed``; returns
    ``(times, op_errors)``, ``times[name][op]`` a list (one per round) of lists of block times
    in seconds per call."""
    from torch.utils.benchmark import Timer

    times = {name: {op: [] for op in OPS} for name in stmts}
    op_errors = dict.fromkeys(untimed, "untimed")
    order = list(stmts)
    for r in range(args.rounds):
        shift = r % len(order)
        rotated = order[shift:] + order[:shift]
        for op in OPS:
            for name in rotated:
                if (name, op) in op_errors:
                    continue
                timer = Timer(
                    stmt="f()",
                    globals={"f": stmts[name][op]},
                    timer=_clock(device),
                    num_threads=args.threads,
                    label=f"n={args.n} k={args.k}",
                    description=name,
                )
                try:
                    m = timer.blocked_autorange(min_run_time=args.min_run_time)
                    times[name][op].append(list(m.times))
                except Exception as exc:  # noqa: BLE001
                    op_errors[(name, op)] = _error(exc)
    return times, op_errors


def _summarise(rounds, base_rounds) -> dict:
    """Median and IQR of all blocks; ratio to the baseline: median over rounds of the
    per-round ratio of medians, with the IQR of the per-round ratios."""
    flat = [t for rnd in rounds for t in rnd]
    q1, med, q3 = _quantiles(flat)
    stat = {"median_s": med, "iqr_s": q3 - q1, "blocks": len(flat), "rounds": len(rounds)}
    if base_rounds:
        ratios = [
            statistics.median(a) / statistics.median(b)
            for a, b in zip(rounds, base_rounds, strict=False)
        ]
        r1, rmed, r3 = _quantiles(ratios)
        stat["ratio"] = rmed
        stat["ratio_iqr"] = r3 - r1
    return stat


def run_time(args, device, dtype) -> dict:
    x, y = _inputs(args, device, dtype)
    names = list(dict.fromkeys([BASELINE, *args.contenders]))
    fns, inputs, failures = _build_all(names, args, device, dtype, x, y)
    results = dict(failures)
    if BASELINE not in fns:
        return results
    stmts = {}
    for name, fn in fns.items():
        try:
            stmts[name] = _statements(fn, inputs[name], y)
            results[name] = {op: {"skipped": why} for op, why in getattr(fn, "untimed", {}).items()}
            if hasattr(fn, "backend_of"):
                results[name]["backend"] = fn.backend_of(inputs[name])
        except Exception as exc:  # noqa: BLE001
            stmts.pop(name, None)
            results[name] = _failure(exc)
    untimed = [(name, op) for name in stmts for op in results[name] if op in OPS]
    times, op_errors = _time_rounds(stmts, args, device, untimed)
    for name in stmts:
        for op in OPS:
            if op in results[name]:  # skipped
                continue
            if (name, op) in op_errors:
                results[name][op] = {"error": op_errors[(name, op)]}
                continue
            base_ok = (BASELINE, op) not in op_errors
            base = times[BASELINE][op] if base_ok else []
            results[name][op] = _summarise(times[name][op], base)
    return results


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _one_forward_backward_extra(fn, x, y, device) -> int:
    x.grad = None  # buffers are freed by reference counting; no gc.collect() (slow) needed
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(x, y).backward()
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - before
    else:
        before = _proc_status_kib("VmRSS")
        _reset_peak_rss()
        fn(x, y).backward()
        extra = (_proc_status_kib("VmHWM") - before) * 1024
    x.grad = None
    return max(extra, 0)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _mallopt(mmap_threshold: int) -> bool:
    """Pin glibc's mmap (and trim) threshold; False where there is no glibc ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def run_memory(args, device, dtype) -> dict:
    x, y = _inputs(args, device, dtype)
    names = list(dict.fromkeys([BASELINE, *args.contenders]))
    results = {}
    if device.type == "cpu":
        if not _mallopt(64 * 1024):
            err = "cannot pin the malloc mmap threshold (no glibc mallopt)"
            return {name: {"memory": {"error": err}} for name in names}
        try:
            _reset_peak_rss()
        except OSError as exc:
            err = f"cannot reset the peak RSS (/proc/self/clear_refs): {_error(exc)}"
            return {name: {"memory": {"error": err}} for name in names}
    for name in names:
        xi = _own_copy(x)
        try:
            fn = build(name, args.n, args.k, device, dtype)
            for _ in range(2):  # warm-up: lazy initialisation is not the loss's memory
                fn(xi, y).backward()
            xi.grad = None
            gc.collect()
            samples = [_one_forward_backward_extra(fn, xi, y, device) for _ in range(3)]
            results[name] = {"memory": {"extra_bytes": int(statistics.median(samples))}}
        except Skipped as exc:
            results[name] = {"skipped": str(exc)}
        except Exception as exc:  # noqa: BLE001
            results[name] = {"memory": {"error": _error(exc)}}
        xi = fn = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = results.get(BASELINE, {}).get("memory", {}).get("extra_bytes")
    for entry in results.values():
        mem = entry.get("memory", {})
        if "extra_bytes" in mem and base:
            mem["ratio"] = mem["extra_bytes"] / base
    return results


def environment(device) -> dict:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("all", "time", "memory"), default="all")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--contenders", default=BASELINE, help="comma-separated names")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-run-time", type=float, default=0.1, help="seconds per block set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = p.parse_args(argv)
    args.contenders = [c for c in args.contenders.split(",") if c]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    start = time.perf_counter()
    try:
        contenders = {}
        if args.mode in ("all", "memory"):
            contenders = run_memory(args, device, dtype)
            gc.collect()
        if args.mode in ("all", "time"):
            if args.mode == "all" and device.type == "cpu":
                _mallopt(32 * 1024 * 1024)
            for name, entry in run_time(args, device, dtype).items():
                contenders.setdefault(name, {}).update(entry)
        error = None
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        contenders, error = {}, _error(exc)
    out = {
        "mode": args.mode,
        "config": {
            "n": args.n,
            "k": args.k,
            "batch": args.batch,
            "device": args.device,
            "dtype": args.dtype,
            "threads": args.threads,
        },
        "contenders": contenders,
        "environment": environment(device),
        "seconds": time.perf_counter() - start,
    }
    if error:
        out["error"] = error
    if args.json:
        print(json.dumps(out), flush=True)
    else:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
