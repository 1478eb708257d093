"""Every file a run writes into its directory: the names (one place), and how each is written
and read. Training decides *what* a file holds; only this module decides where it goes and in
which format (the checkpoints' contents are :mod:`.checkpoint`'s, their names are here). Every
write is atomic (:mod:`.checkpoint`'s temporary file, fsync, ``os.replace``).

=====================  ===================================================================
``config.yaml``        the resolved configuration (:func:`write_config`, :func:`read_config`);
                       it marks a run directory
``env.json``           the machine and versions (:func:`write_environment`;
                       ``env-resume-<time>.json`` for each resume)
``noise.pt``           the noisy labels, flips and groups (:func:`write_noise`)
``noise.json``         their summary (:func:`read_noise_summary`)
``long_tail.json``     long-tailed runs: class order, counts, thirds (:func:`write_long_tail`)
``metrics.csv/jsonl``  one record per epoch (:func:`write_metrics`, :func:`read_metrics`)
``last.pt``            the last checkpoint; ``best.pt`` the best epoch's (:data:`LAST`,
                       :data:`BEST`)
``results.json``       the run's summary (:func:`write_results`); it marks a finished run
``failed.json``        why the last training of the run failed, until one succeeds
                       (:func:`write_failure`, :func:`read_failure`)
=====================  ===================================================================

Beyond the run directory, a *run archive* (``<name>.runs.jsonl.gz``, :func:`write_archive`,
:func:`read_archive`) keeps what a report reads of many runs — config, epoch records (floats to
6 decimals: accuracies are fractions of at most 10^4 images, exact), noise summary and
environments — in one small file (no checkpoints, no labels), so that a study can be reported
and re-selected without its run directories.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time

import torch

from .checkpoint import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text
from .config import Config, from_saved, load_yaml, to_yaml

CONFIG = "config.yaml"  #: marks a run directory
RESULTS = "results.json"  #: marks a finished run
LAST = "last.pt"  #: the checkpoint ``--resume`` continues from
BEST = "best.pt"  #: the checkpoint of the best validation top-5 epoch
ENV = "env.json"
ENV_RESUME = "env-resume-"  #: prefix of the environment record of each resume
NOISE = "noise.pt"
NOISE_SUMMARY = "noise.json"
LONG_TAIL = "long_tail.json"
METRICS_CSV, METRICS_JSONL = "metrics.csv", "metrics.jsonl"
FAILED = "failed.json"
ARCHIVE_SUFFIX = ".runs.jsonl.gz"  #: a run archive's file name ends so


def path(run_dir: str, name: str) -> str:
    """The path of the run file ``name`` (one of this module's names) in ``run_dir``."""
    return os.path.join(run_dir, name)


def write_config(run_dir: str, cfg: Config) -> None:
    atomic_write_text(path(run_dir, CONFIG), to_yaml(cfg))


def read_config(run_dir: str) -> Config:
    """The saved config of a run (ValueError naming the file when it cannot be read)."""
    return from_saved(load_yaml(path(run_dir, CONFIG)))


def write_results(run_dir: str, summary: dict) -> None:
    atomic_write_json(path(run_dir, RESULTS), summary)


def write_failure(run_dir: str, error: BaseException) -> None:
    """``failed.json``: the error that ended the training of the run, where and when."""
    atomic_write_json(path(run_dir, FAILED), {
        "error": f"{type(error).__name__}: {error}".splitlines()[0],
        "host": socket.gethostname(), "pid": os.getpid(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })  # fmt: skip


def read_failure(run_dir: str) -> dict | None:
    """``failed.json`` of a run (``None``: none, or unreadable)."""
    try:
        with open(path(run_dir, FAILED)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def clear_failure(run_dir: str) -> None:
    if os.path.exists(path(run_dir, FAILED)):
        os.unlink(path(run_dir, FAILED))


def write_noise(run_dir: str, labels: dict, summary: dict) -> None:
    """``noise.pt`` (``labels``: tensors) and ``noise.json`` (``summary``)."""
    atomic_torch_save(path(run_dir, NOISE), labels)
    atomic_write_json(path(run_dir, NOISE_SUMMARY), summary)


def read_noise_summary(run_dir: str) -> dict | None:
    """``noise.json`` of a run, or ``None`` when it has none."""
    file = path(run_dir, NOISE_SUMMARY)
    if not os.path.exists(file):
        return None
    with open(file) as f:
        return json.load(f)


def write_long_tail(run_dir: str, info: dict) -> None:
    atomic_write_json(path(run_dir, LONG_TAIL), info)


#: the top-k accuracies an evaluation records on validation and test (``val_top<k>``,
#: ``test_top<k>``; #22's k study); k above the number of classes is left out. Runs recorded
#: before this have top-1 and top-5 only
EVAL_KS = tuple(range(1, 11))

METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_top1", "train_top5", "val_top1", "val_top5",
    "test_top1", "test_top5", "epoch_seconds",
    # per class (macro averages; head/medium/tail thirds in long-tailed runs): empty if absent
    "val_macro_top5", "test_macro_top1", "test_macro_top5", "test_head_top5", "test_medium_top5",
    "test_tail_top5",
    # the other top-k of EVAL_KS: empty in epochs recorded before they were
    *(f"{split}_top{k}" for split in ("val", "test") for k in EVAL_KS if k not in (1, 5)),
)  # fmt: skip


def write_metrics(run_dir: str, history: list[dict]) -> None:
    """Rewrite ``metrics.csv`` and ``metrics.jsonl`` from the full history (atomically), so
    they always agree with the last checkpoint, including after a resume."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    atomic_write_text(path(run_dir, METRICS_CSV), buffer.getvalue())
    lines = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write_text(path(run_dir, METRICS_JSONL), lines)


def read_metrics(run_dir: str) -> list[dict]:
    """The epoch records of ``metrics.jsonl`` (none if it is missing); ValueError naming the
    file and the line when it is not JSON lines or not UTF-8 text."""
    file = path(run_dir, METRICS_JSONL)
    if not os.path.exists(file):
        return []
    try:
        with open(file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{file} is not UTF-8 text (byte {err.start})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} line {number} is not JSON ({err.msg}): corrupted") from None
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
    names = sorted(n for n in os.listdir(run_dir) if n.startswith(ENV_RESUME))
    records = []
    for name in [ENV, *names]:
        file = path(run_dir, name)
        if os.path.isfile(file):
            with open(file) as f:
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


def write_environment(run_dir: str, device: torch.device, world_size: int, resumed: bool) -> None:
    """``env.json`` (a new run) or ``env-resume-<time>.json`` (a resumed one): :func:`environment`
    and the number of processes."""
    name = f"{ENV_RESUME}{time.time():.0f}.json" if resumed else ENV
    atomic_write_json(path(run_dir, name), {**environment(device), "world_size": world_size})


def is_archive(file: str) -> bool:
    """Whether ``file`` names a run archive (a file whose name ends in :data:`ARCHIVE_SUFFIX`)."""
    return file.endswith(ARCHIVE_SUFFIX) and os.path.isfile(file)


def archive_entry(run_dir: str) -> dict:
    """What a report reads of one run: its directory's name, config (the saved mapping), epoch
    records (floats rounded to 6 decimals), noise summary and environment records."""
    return {
        "name": os.path.basename(os.path.normpath(run_dir)),
        "config": load_yaml(path(run_dir, CONFIG)),
        "metrics": [
            {key: round(v, 6) if isinstance(v, float) else v for key, v in row.items()}
            for row in read_metrics(run_dir)
        ],  # fmt: skip
        "noise": read_noise_summary(run_dir),
        "environments": read_environments(run_dir),
    }


def check_archive_name(file: str) -> None:
    if not file.endswith(ARCHIVE_SUFFIX) or file == ARCHIVE_SUFFIX:
        raise ValueError(f"a run archive's name must end in {ARCHIVE_SUFFIX}, got {file!r}")


def write_archive(file: str, entries: list[dict]) -> None:
    """The run archive of ``entries`` (:func:`archive_entry`; module docstring): one JSON line
    per run, gzip with a fixed time stamp (the same runs give the same bytes), atomically."""
    check_archive_name(file)
    lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries)
    atomic_write_bytes(file, gzip.compress(lines.encode("utf-8"), mtime=0))


def read_archive(file: str) -> list[dict]:
    """The entries of a run archive (:func:`archive_entry`); ValueError naming the file (and
    the line) when it is not a gzip file of JSON lines with those keys."""
    try:
        with gzip.open(file, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not a run archive (gzip of JSON lines): {err}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} line {number} is not JSON ({err.msg})") from None
        if not isinstance(entry, dict) or not {"name", "config", "metrics"} <= entry.keys():
            raise ValueError(f"{file} line {number} is not a run (name, config, metrics)")
        entries.append(entry)
    return entries
