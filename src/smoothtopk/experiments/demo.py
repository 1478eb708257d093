"""The demo sweep: cross-entropy against L_{5,1} on the embedded data at label noise levels
0, 0.2, 0.4, 0.6 and 0.8 -- the paper's CIFAR-100 experiment in miniature. Both losses use the
same recipe (the ``demo`` preset); nothing is tuned per loss."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

from tqdm import tqdm

from .checkpoint import atomic_write_json
from .config import resolve
from .report import write_report
from .train import Prepared, check_run_dir, execute, prepare

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
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, MARKER)):
            raise ValueError(f"{out} exists and is not a demo directory; choose another --out")
        if not (resume or overwrite):
            raise ValueError(
                f"demo directory {out} already exists; pass --resume to continue it "
                "or --overwrite to replace it"
            )
    elif os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} exists and is not a directory")
    runs = []
    for noise in noise_levels:
        for loss, extra in LOSSES:
            cli = {**(overrides or {}), "loss": loss, "noise": noise, **extra}
            cfg = resolve("demo", None, cli)
            run_dir = os.path.join(out, run_name(loss, noise))
            if overwrite:
                check_run_dir(run_dir, False, True)
            runs.append(prepare(cfg, run_dir, resume=resume, overwrite=overwrite))
    return runs


def run(
    out: str,
    runs: list[Prepared],
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Train every run of the plan (finished ones are skipped on resume), then report."""
    if overwrite and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    atomic_write_json(
        os.path.join(out, MARKER),
        {"noise_levels": sorted({r.cfg.noise for r in runs}),
         "losses": [loss for loss, _ in LOSSES], "runs": [r.run_dir for r in runs]},
    )  # fmt: skip
    start = time.perf_counter()
    disable = None if progress else True  # None: bars only on a terminal
    bar = tqdm(runs, desc="demo runs", disable=disable, position=0, dynamic_ncols=True)
    for prepared in bar:
        prepared.overwrite = False  # the whole directory was replaced above
        prepared.cfg.progress = progress
        t0 = time.perf_counter()
        summary = execute(prepared, log=None, position=1)
        (bar.write if progress else log)(
            f"{os.path.basename(prepared.run_dir):22s} best epoch {summary['best_epoch']:3d}: "
            f"test top-1 {100 * summary['test_top1']:5.1f}%  "
            f"top-5 {100 * summary['test_top5']:5.1f}%  ({time.perf_counter() - t0:.0f}s)"
        )
    report = write_report([r.run_dir for r in runs], os.path.join(out, "report"))
    report["seconds"] = time.perf_counter() - start
    return report
