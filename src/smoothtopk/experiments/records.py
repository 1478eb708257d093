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
    """The epoch records of ``metrics.jsonl`` (none if it is missing); ValueError naming the
    file and the line when it is not JSON lines or not UTF-8 text."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not JSON ({err.msg}): corrupted") from None
    return records


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


#: the fields of :func:`machine`: what can move a run's last digits (rounding, kernels chosen)
MACHINE_FIELDS = ("cpu_model", "cpu_capability", "torch_threads", "torch", "python", "arch")
#: environment variables that change which CPU kernels torch runs
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else ``platform.processor()``; else ``unknown``).

    Example:
        >>> isinstance(cpu_model(), str)
        True
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """The machine a result comes from, as far as it can change the numbers: the CPU model, the
    instruction set torch's CPU kernels use (``torch.backends.cpu.get_cpu_capability()``, which
    ``ATEN_CPU_CAPABILITY`` can lower), the intra-op thread count, torch and Python versions,
    and the ISA variables when set. Two runs with equal :data:`MACHINE_FIELDS` are bitwise
    reproducible against each other; others may differ in their last digits.

    Example:
        >>> info = machine()
        >>> all(field in info for field in MACHINE_FIELDS)
        True
    """
    info = {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "arch": platform.machine(),
    }
    info.update({name: os.environ[name] for name in ISA_VARIABLES if name in os.environ})
    return info


def machine_label(info: dict) -> str:
    """One line naming a :func:`machine` record (the same line for the same machine: what the
    report compares); fields an older record lacks read ``?``.

    Example:
        >>> machine_label({"cpu_model": "AMD EPYC", "arch": "x86_64", "cpu_capability": "AVX512",
        ...                "torch_threads": 1, "torch": "2.14.1", "python": "3.11.7"})
        'AMD EPYC (x86_64), AVX512, 1 thread(s), torch 2.14.1, Python 3.11.7'
    """
    extra = "".join(f", {name}={info[name]}" for name in ISA_VARIABLES if name in info)
    return (
        f"{info.get('cpu_model', '?')} ({info.get('arch', '?')}), "
        f"{info.get('cpu_capability', '?')}, {info.get('torch_threads', '?')} thread(s), "
        f"torch {info.get('torch', '?')}, Python {info.get('python', '?')}{extra}"
    )


def read_environments(run_dir: str) -> list[dict]:
    """The environment records of a run: ``env.json``, then each ``env-resume-*.json`` (one per
    resume) in the order written; none for a run that has no record."""
    names = sorted(n for n in os.listdir(run_dir) if n.startswith("env-resume-"))
    records = []
    for name in ["env.json", *names]:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            with open(path) as f:
                records.append(json.load(f))
    return records


def environment(device: torch.device) -> dict:
    import torchvision

    import smoothtopk

    env = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        **machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torchvision": torchvision.__version__,
        "smoothtopk": getattr(smoothtopk, "__version__", None),
        "git_commit": _git_commit(),
        "device": str(device),
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env
