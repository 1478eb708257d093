"""Training several prepared runs: in this process, or in worker processes that die with the
parent (a sweep killed by SIGKILL or SIGTERM leaves no orphan training on).

Tiny models use cores better as separate single-threaded processes than as one multi-threaded
one, so :func:`train_all` gives each of ``jobs`` spawned workers ``cpu_count // jobs`` threads.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from queue import Empty

import torch
from tqdm import tqdm

from .claims import Busy
from .config import Config
from .train import Prepared, fit_claimed, prepare

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def default_jobs(num_runs: int) -> int:
    """One single-threaded worker process per CPU core (at most one per run)."""
    return max(1, min(num_runs, os.cpu_count() or 1))


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


#: what a worker reports to its parent's bar (:func:`_init_worker`): a training step, an epoch
STEP, EPOCH = "step", "epoch"
#: in a worker process: the parent's queue of progress messages (:data:`STEP`, :data:`EPOCH`)
_PROGRESS = None


def _init_worker(parent: int, progress) -> None:
    """Worker initializer: die with ``parent`` (:func:`die_with_parent`) and report each
    training step and each finished epoch on the queue ``progress``, for the parent's bar."""
    global _PROGRESS
    _PROGRESS = progress
    die_with_parent(parent)


def _report_step() -> None:
    """A worker's run finished a training step (:func:`.train.fit`'s ``on_step``)."""
    if _PROGRESS is not None:
        _PROGRESS.put(STEP)


def _report_epoch(message: str) -> None:
    """The log of a worker's run: each epoch line (:func:`.train.epoch_line`) is one finished
    epoch for the parent's bar; the other lines are dropped, as before."""
    if _PROGRESS is not None and message.startswith("epoch "):
        _PROGRESS.put(EPOCH)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _job(prepared: Prepared) -> tuple:
    """What a worker needs to prepare the run again as it was planned."""
    resume = prepared.resume_from is not None
    return prepared.cfg.to_dict(), prepared.run_dir, resume, prepared.overwrite


def _run_one(
    cfg_values: dict, run_dir: str, resume: bool, overwrite: bool, threads: int
) -> tuple[str, dict, float]:
    """A worker process: one run, prepared as the parent planned it (``resume``,
    ``overwrite``), with ``threads`` intra-op threads and no progress bars."""
    torch.set_num_threads(threads)
    cfg = Config(**cfg_values)
    cfg.progress = False
    t0 = time.perf_counter()
    prepared = prepare(cfg, run_dir, resume=resume, overwrite=overwrite)
    return _claimed(prepared, _report_epoch, t0, on_step=_report_step)


def _claimed(prepared: Prepared, log, t0: float, position: int = 0,
             on_step=None) -> tuple[str, dict, float]:  # fmt: skip
    """Train ``prepared`` under its claim (:func:`.train.fit_claimed`); a run that another
    trainer took meanwhile is left to it (its summary: ``{"busy": why}``)."""
    try:
        summary = fit_claimed(prepared, log=log, position=position, on_step=on_step)
    except Busy as err:
        summary = {"busy": str(err)}
    return prepared.run_dir, summary, time.perf_counter() - t0


def _line(run_dir: str, summary: dict, seconds: float) -> str:
    if "busy" in summary:
        return f"{os.path.basename(run_dir)}: not trained here: {summary['busy']}"
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
    """Train every prepared run, in this process (``jobs == 1``) or in ``jobs`` worker processes
    (spawned; ``None``: :func:`default_jobs`); returns ``(run_dir, summary, seconds)`` per run,
    in the order the runs finished."""
    jobs = default_jobs(len(runs)) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    done = []
    bar = tqdm(total=len(runs), desc=desc, disable=None if progress else True, position=0,
               dynamic_ncols=True)  # fmt: skip
    write = bar.write if progress else log
    if jobs == 1:
        for prepared in runs:
            prepared.cfg.progress = progress
            done.append(_claimed(prepared, None, time.perf_counter(), position=1))
            write(_line(*done[-1]))
            bar.update()
    else:

        def finished(result: tuple) -> None:
            write(_line(*result))
            bar.update()

        done = _train_in_workers(runs, jobs, progress, finished)
    bar.close()
    return done


def remaining_epochs(prepared: Prepared) -> int:
    """The epochs that ``prepared`` has left to train (all of them unless resumed)."""
    state = prepared.resume_state
    return prepared.cfg.epochs - (int(state["epoch"]) if state else 0)


def remaining_steps(prepared: Prepared) -> int:
    """The training steps that ``prepared`` has left in one process (a worker's run): batches
    of ``batch_size`` per epoch (the last one smaller), less those a mid-epoch checkpoint
    has done."""
    per_epoch = math.ceil(len(prepared.data.train) / prepared.cfg.batch_size)
    done = int(prepared.resume_state.get("step", 0)) if prepared.resume_state else 0
    return remaining_epochs(prepared) * per_epoch - done


class _Progress:
    """The parent's second bar: the training steps of every worker (so that it moves within
    seconds, during the first epoch of the first runs), with the epochs finished in its
    postfix. Shown on a terminal only (tqdm's ``disable=None``), as every bar of the runner."""

    def __init__(self, runs: list[Prepared], progress: bool):
        self.epochs, self.total_epochs = 0, sum(remaining_epochs(r) for r in runs)
        self.bar = tqdm(total=sum(remaining_steps(r) for r in runs), desc="steps", unit="step",
                        postfix=self._epochs(), disable=None if progress else True, position=1,
                        dynamic_ncols=True)  # fmt: skip

    def _epochs(self) -> str:
        return f"epochs {self.epochs}/{self.total_epochs}"

    def take(self, queue) -> None:
        """Apply the messages that ``queue`` holds now, in their order."""
        steps = 0
        for message in _drain(queue):
            if message == STEP:
                steps += 1
                continue
            self.bar.update(steps)  # the steps before this epoch's end, then the epoch
            steps, self.epochs = 0, self.epochs + 1
            self.bar.set_postfix_str(self._epochs(), refresh=False)
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


def _train_in_workers(runs: list[Prepared], jobs: int, progress: bool, finished) -> list:
    """Train ``runs`` in ``jobs`` spawned workers of ``cpu_count // jobs`` threads each,
    calling ``finished(result)`` as each ends; a second bar counts the training steps that
    the workers report (:class:`_Progress`), so that a long first epoch is not silence."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(os.getpid(), queue)
    )
    bar = _Progress(runs, progress)
    done = []
    with pool:
        pending = {pool.submit(_run_one, *_job(r), threads) for r in runs}
        while pending:
            ended, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            bar.take(queue)
            for future in ended:
                done.append(future.result())
                finished(done[-1])
    bar.take(queue)
    bar.close()
    return done


def _drain(queue) -> list:
    """The messages that ``queue`` holds now (taken out), in their order."""
    messages = []
    while True:
        try:
            messages.append(queue.get_nowait())
        except Empty:
            return messages
