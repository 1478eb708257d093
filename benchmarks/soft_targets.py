"""Cost of probability targets and label smoothing (issue #24), against cross-entropy's.

    python -m benchmarks.soft_targets --out benchmarks/results/soft_targets

Per configuration ``(batch, classes, k)``, one forward+backward of each contender, timed with
``torch.utils.benchmark`` in interleaved rounds (every contender once per round, so drifts of a
shared machine hit all alike; median over rounds), one intra-op thread, float32 on the CPU:

* ``ce``: ``F.cross_entropy`` with class indices (the baseline of every ratio);
* ``ce_probs``: ``F.cross_entropy`` with dense probability targets;
* ``ce_smooth``: ``F.cross_entropy(..., label_smoothing=0.1)`` with class indices;
* ``ours``: the smooth loss with class indices;
* ``ours_probs``, ``ours_smooth``, ``ours_mixup``: with dense probabilities, with
  ``label_smoothing=0.1``, and with mixup's two-hot targets (``λ = 0.7``).

Writes ``OUT/results.json`` and ``OUT/results.md`` (machine and torch recorded with them).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from smoothtopk import smooth_topk_svm_loss

CONFIGS = [(64, 100, 5), (64, 100, 1), (256, 1000, 5), (256, 1000, 1), (128, 10_000, 5)]
QUICK = CONFIGS[:3]


def contenders(batch: int, classes: int, k: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, classes, generator=generator).requires_grad_()
    y = torch.randint(0, classes, (batch,), generator=generator)
    other = torch.randint(0, classes, (batch,), generator=generator)
    probs = torch.rand(batch, classes, generator=generator).softmax(dim=1)
    two_hot = 0.7 * F.one_hot(y, classes).float() + 0.3 * F.one_hot(other, classes).float()
    ours = smooth_topk_svm_loss
    return {
        "ce": lambda: F.cross_entropy(x, y),
        "ce_probs": lambda: F.cross_entropy(x, probs),
        "ce_smooth": lambda: F.cross_entropy(x, y, label_smoothing=0.1),
        "ours": lambda: ours(x, y, k=k),
        "ours_probs": lambda: ours(x, probs, k=k),
        "ours_smooth": lambda: ours(x, y, k=k, label_smoothing=0.1),
        "ours_mixup": lambda: ours(x, two_hot, k=k),
    }


def measure(batch, classes, k, seconds, rounds) -> dict:
    """Median µs of one forward+backward per contender over interleaved rounds."""
    calls = contenders(batch, classes, k)
    for call in calls.values():
        call().backward()  # built (the CPU kernel loaded) before anything is timed
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            timer = Timer("call().backward()", globals={"call": call})
            times[name].append(timer.blocked_autorange(min_run_time=seconds).median * 1e6)
    medians = {name: sorted(values)[rounds // 2] for name, values in times.items()}
    return {"config": {"batch": batch, "classes": classes, "k": k}, "us": medians}


def markdown(results: list[dict], machine: str) -> str:
    lines = [
        f"Forward+backward, float32, 1 thread ({machine}); µs, and ratios in the same process.",
        "",
        "| N × C, k | CE µs | CE probs µs | ours µs | ours probs µs | ours smooth µs | "
        "ours mixup µs | probs / CE probs | probs / ours | smooth / CE smooth |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, t = r["config"], r["us"]
        lines.append(
            f"| {c['batch']} × {c['classes']}, {c['k']} | {t['ce']:.0f} | {t['ce_probs']:.0f} | "
            f"{t['ours']:.0f} | {t['ours_probs']:.0f} | {t['ours_smooth']:.0f} | "
            f"{t['ours_mixup']:.0f} | {t['ours_probs'] / t['ce_probs']:.1f}× | "
            f"{t['ours_probs'] / t['ours']:.1f}× | {t['ours_smooth'] / t['ce_smooth']:.1f}× |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, torch {torch.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json/.md")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK}")
    parser.add_argument("--seconds", type=float, default=0.3, help="per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [measure(*c, args.seconds, args.rounds) for c in (QUICK if args.quick else CONFIGS)]
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "results": results}
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results, record["machine"]))
    sys.stdout.write(markdown(results, record["machine"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
