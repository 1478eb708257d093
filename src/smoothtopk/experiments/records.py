"""What a run writes besides checkpoints: per-epoch metrics (CSV and JSON lines) and the
environment it ran in."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import time

import torch

from .checkpoint import atomic_write_text

METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_top1", "train_top5", "val_top1", "val_top5",
    "test_top1", "test_top5", "epoch_seconds",
    # per class (macro averages; head/medium/tail thirds in long-tailed runs): empty if absent
    "val_macro_top5", "test_macro_top1", "test_macro_top5", "test_head_top5", "test_medium_top5",
    "test_tail_top5",
)  # fmt: skip


def write_metrics(run_dir: str, history: list[dict]) -> None:
    """Rewrite ``metrics.csv`` and ``metrics.jsonl`` from the full history (atomically), so
    they always agree with the last checkpoint, including after a resume."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    atomic_write_text(os.path.join(run_dir, "metrics.csv"), buffer.getvalue())
    lines = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write_text(os.path.join(run_dir, "metrics.jsonl"), lines)


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    import torchvision

    import smoothtopk

    env = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "smoothtopk": getattr(smoothtopk, "__version__", None),
        "git_commit": _git_commit(),
        "device": str(device),
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env
