"""The demo sweep: cross-entropy against L_{5,1} on the embedded data at label noise levels
0, 0.2, 0.4, 0.6 and 0.8 -- the paper's CIFAR-100 experiment in miniature. Both losses use the
same recipe (the ``demo`` preset); nothing is tuned per loss."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from tqdm import tqdm

from .checkpoint import atomic_write_json
from .config import Config, resolve
from .report import write_report
from .train import (
    LOCK,
    Prepared,
    check_unlocked,
    check_writable,
    clear_directory,
    execute,
    locked,
    prepare,
    prepare_member,
)

NOISE_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8)
LOSSES = (("ce", {}), ("smooth-svm", {"k": 5, "tau": 1.0, "alpha": 1.0}))
MARKER = "demo.json"


def run_name(loss: str, noise: float) -> str:
    return f"{loss}-noise{noise:g}"


def plan(
    out: str,
    noise_levels=NOISE_LEVELS,
    resume: bool = False,
    overwrite: bool = False,
    overrides: dict | None = None,
) -> list[Prepared]:
    """Validate the whole sweep and load its data; writes nothing."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    check_writable(out, "demo directory")
    check_unlocked(out, "demo")
    if resume and not (os.path.isdir(out) and os.listdir(out)):
        raise ValueError(f"nothing to resume: {out} does not hold a demo; run it without --resume")
    if os.path.isdir(out) and set(os.listdir(out)) - {LOCK}:
        if not os.path.isfile(os.path.join(out, MARKER)):
            raise ValueError(f"{out} exists and is not a demo directory; choose another --out")
        if not (resume or overwrite):
            raise ValueError(
                f"demo directory {out} already exists; pass --resume to continue it "
                "or --overwrite to replace it"
            )
    runs = []
    for noise in noise_levels:
        for loss, extra in LOSSES:
            cli = {**(overrides or {}), "loss": loss, "noise": noise, **extra}
            cfg = resolve("demo", None, cli)
            run_dir = os.path.join(out, run_name(loss, noise))
            runs.append(prepare_member(cfg, run_dir, overwrite=overwrite))
    return runs


def default_jobs(num_runs: int) -> int:
    """One single-threaded worker process per CPU core (at most one per run)."""
    return max(1, min(num_runs, os.cpu_count() or 1))


def _run_one(
    cfg_values: dict, run_dir: str, resume: bool, overwrite: bool, threads: int
) -> tuple[str, dict, float]:
    """A worker process: one run, prepared as the parent planned it (``resume``,
    ``overwrite``), with ``threads`` intra-op threads and no progress bars."""
    torch.set_num_threads(threads)
    cfg = Config(**cfg_values)
    cfg.progress = False
    t0 = time.perf_counter()
    summary = execute(prepare(cfg, run_dir, resume=resume, overwrite=overwrite), log=None)
    return run_dir, summary, time.perf_counter() - t0


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this process when the parent ``parent`` dies, even by SIGKILL.

    Linux: the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``). Elsewhere,
    and as a second guard, a daemon thread checks once a second whether the parent is still
    ours (an orphan is adopted by another process) and exits if not."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


_PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _job(prepared: Prepared) -> tuple:
    """What a worker needs to prepare the run again as it was planned."""
    resume = prepared.resume_from is not None
    return prepared.cfg.to_dict(), prepared.run_dir, resume, prepared.overwrite


def _line(run_dir: str, summary: dict, seconds: float) -> str:
    return (
        f"{os.path.basename(run_dir):22s} best epoch {summary['best_epoch']:3d}: "
        f"test top-1 {100 * summary['test_top1']:5.1f}%  "
        f"top-5 {100 * summary['test_top5']:5.1f}%  ({seconds:.0f}s)"
    )


def train_all(
    runs: list[Prepared],
    jobs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    desc: str = "runs",
) -> list[tuple[str, dict, float]]:
    """Train every prepared run, in this process (``jobs == 1``) or in ``jobs`` worker processes;
    returns ``(run_dir, summary, seconds)`` per run, in the order the runs finished.

    With ``jobs > 1`` the runs go to that many worker processes (spawned), each with
    ``cpu_count // jobs`` threads: tiny models use cores better as separate single-threaded
    processes than as one multi-threaded one, and a busy machine slows them down gracefully.
    ``jobs=None``: :func:`default_jobs`.
    """
    jobs = default_jobs(len(runs)) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    done = []
    disable = None if progress else True  # None: bars only on a terminal
    bar = tqdm(total=len(runs), desc=desc, disable=disable, position=0, dynamic_ncols=True)
    write = bar.write if progress else log
    if jobs == 1:
        for prepared in runs:
            prepared.cfg.progress = progress
            t0 = time.perf_counter()
            summary = execute(prepared, log=None, position=1)
            done.append((prepared.run_dir, summary, time.perf_counter() - t0))
            write(_line(*done[-1]))
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=context,
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )
        with pool:
            futures = [pool.submit(_run_one, *_job(r), threads) for r in runs]
            for future in as_completed(futures):
                done.append(future.result())
                write(_line(*done[-1]))
                bar.update()
    bar.close()
    return done


def run(
    out: str,
    runs: list[Prepared],
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    jobs: int | None = None,
) -> dict:
    """Train every run of the plan (finished ones are skipped on resume), then report.
    ``jobs``: see :func:`train_all`."""
    with locked(out, "demo"):
        if overwrite:
            clear_directory(out)
        return _run_locked(out, runs, log, progress, jobs)


def _run_locked(out, runs, log, progress, jobs) -> dict:
    atomic_write_json(
        os.path.join(out, MARKER),
        {"noise_levels": sorted({r.cfg.noise for r in runs}),
         "losses": [loss for loss, _ in LOSSES], "runs": [r.run_dir for r in runs]},
    )  # fmt: skip
    start = time.perf_counter()
    train_all(runs, jobs=jobs, progress=progress, log=log, desc="demo runs")
    report = write_report([r.run_dir for r in runs], os.path.join(out, "report"))
    report["seconds"] = time.perf_counter() - start
    return report
