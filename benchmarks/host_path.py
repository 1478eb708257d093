"""Host cost of the CUDA code path, measured without a GPU (issue #20, item 2b).

    python -m benchmarks.host_path --out benchmarks/results/host_path

On a GPU below about 10^5 classes a loss call is bound by its host work: Python, dispatch and
one launch per kernel. This runs the public loss on the Triton backend's code path with CPU
tensors and the Triton launches stubbed out (the kernels' own time is not measured; no Triton
needed), the targets checked as on CUDA (by the kernel, or by the package's asynchronous device
assertion where a backend does not check them), and reports per configuration, against
``F.cross_entropy`` measured the same way in the same process:

* host time of one forward+backward (``torch.utils.benchmark`` on the process's CPU time,
  median of interleaved rounds);
* kernels per forward+backward: ATen operators that do device work (recorded by a
  ``TorchDispatchMode``; allocations and views excluded) plus the stubbed Triton launches;
* the GPU self-check's one-time cost per kind of call (:func:`smoothtopk.backends.triton.
  self_check`): its extra host time, and its kernels.

CPU ATen operators on tiny tensors cost about what a CUDA launch costs the host (a few µs), so
the ratios are a model of the GPU's host side, not a GPU measurement. Writes
``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer

from smoothtopk import _convention, _validation, backends, smooth_topk, smooth_topk_svm_loss
from smoothtopk.backends import triton as triton_backend

#: operators that allocate or re-view memory without a kernel
NO_KERNEL = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "alias",
    "_unsafe_view", "detach", "t", "transpose", "expand", "as_strided", "select", "slice",
    "unsqueeze", "squeeze", "permute", "lift_fresh", "_reshape_alias", "split", "unbind",
    "_local_scalar_dense",
}  # fmt: skip
CONFIGS = [(256, 1000, 5), (256, 1000, 1), (256, 10_000, 5), (64, 100, 5), (256, 1000, 20)]
HOST_SHAPE = (4, 32)  # rows, classes of the host-time measurement (k = 20 fits)


class _Kernels(TorchDispatchMode):
    """Counts the ATen operators of a region that do device work, by name."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if name.startswith("triton_"):  # our operator: count what its implementation runs
            implementation = getattr(triton_backend, f"_{name}")
            with self:
                return implementation(*args, **(kwargs or {}))
        if name not in NO_KERNEL:
            self.names.append(name)
        return func(*args, **(kwargs or {}))


class _StubKernel:
    """A ``triton.jit`` kernel whose launch ``kernel[grid](*args, **options)`` only records its
    name (no operator runs for it, as none does for a Triton launch on a GPU)."""

    def __init__(self, name: str, launches: list):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **options):
        self.launches.append(self.name)


def _stub_kernels(launches: list) -> types.SimpleNamespace:
    """The kernel module with every ``triton.jit`` kernel stubbed (:class:`_StubKernel`)."""
    real = importlib.import_module("smoothtopk.backends.triton_jit")  # not a stub of an outer one
    stubs = {}
    for name in dir(real):
        if name.endswith("_kernel") and hasattr(getattr(real, name), "arg_names"):
            stubs[name] = _StubKernel(name, launches)
    return types.SimpleNamespace(**stubs)


#: multiprocessors of the GPU that the proxy models (an H200), for the programs per row
PROCESSORS = 132


@contextlib.contextmanager
def cuda_code_path(launches: list):
    """The Triton backend's host path on CPU tensors: every Python line of it runs, the
    ``triton.jit`` launches stubbed (each appends its kernel's name to ``launches``), the
    programs per row planned for an H200, the targets checked as on CUDA (by the kernel: no
    host check; the package's own device-side checks elsewhere), the backend available."""
    kernels = _stub_kernels(launches)
    patches = {
        (triton_backend, "_kernels"): lambda: kernels,
        (triton_backend, "_device_processors"): lambda scores: PROCESSORS,
        (triton_backend, "unavailable"): lambda scores, k: None,
        (triton_backend, "_checks_on_host"): lambda device: False,
        (_validation, "checks_eagerly"): lambda tensor: False,
        (_convention, "checks_eagerly"): lambda tensor: False,
        (backends.cpu, "unavailable"): lambda scores, k: "stubbed: the CUDA code path",
    }
    saved = {key: getattr(*key) for key in patches}
    try:
        for (module, name), value in patches.items():
            setattr(module, name, value)
        _forget()  # no plan or programs per row chosen outside the stubs is reused, nor kept
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)
        _forget()


def _forget() -> None:
    """Forget the plans, programs per row and launches set up so far (they depend on the
    stubs)."""
    smooth_topk.clear_plans()
    triton_backend._SPLITS.clear()
    triton_backend._LAUNCHES.clear()


def _inputs(batch, classes):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, classes, generator=generator).requires_grad_()
    return x, torch.randint(0, classes, (batch,), generator=generator)


def _median_us(statement, env, seconds):
    """Median µs of the statement in this process's CPU time (``time.process_time``): the host
    work itself, which other processes on a shared machine do not inflate as they do wall
    time."""
    timer = Timer(statement, globals=env, timer=time.process_time)
    return timer.blocked_autorange(min_run_time=seconds).median * 1e6


def _kernels(fn):
    launches: list[str] = []
    with cuda_code_path(launches), _Kernels() as mode:
        fn()
    return mode.names, launches


def host_time(k, seconds=0.3, rounds=5) -> dict:
    """Host µs of one forward+backward at ``HOST_SHAPE``, ours on the CUDA path and
    cross-entropy, interleaved: the same operators and branches as any shape with one program
    per row, and no compute to speak of (CPU operators on tiny tensors cost about a launch)."""
    x, y = _inputs(*HOST_SHAPE)
    env = {"x": x, "y": y, "k": k, "F": F, "loss": smooth_topk_svm_loss}
    ours, ce = [], []
    with cuda_code_path([]), backends_forced("triton"):
        for _ in range(rounds):  # interleaved: the same load for both
            ours.append(_median_us("loss(x, y, k=k).backward()", env, seconds))
            ce.append(_median_us("F.cross_entropy(x, y).backward()", env, seconds))
    ours.sort(), ce.sort()
    middle = rounds // 2
    return {"k": k, "smooth_topk": ours[middle], "cross_entropy": ce[middle],
            "ratio": ours[middle] / ce[middle]}  # fmt: skip


#: rows, classes and k of the split rows' measurement: the smallest shape that the H200's plan
#: splits (4 segments of 4 chunks of 128 classes)
SPLIT_SHAPE = (4, 2048, 20)


def split_rows_cost(seconds=0.3, rounds=5) -> dict:
    """Extra host µs of split rows (several programs per row: four forward kernels and their
    intermediates, as n >= 10^4 at batch 256 on an H200): ours at :data:`SPLIT_SHAPE` with the
    H200's plan against ours forced to one program per row, interleaved (no cross-entropy: at
    this shape its CPU compute is not a launch's cost)."""
    global PROCESSORS
    rows, classes, k = SPLIT_SHAPE
    x, y = _inputs(rows, classes)
    env = {"x": x, "y": y, "k": k, "loss": smooth_topk_svm_loss}
    times: dict[int, list] = {PROCESSORS: [], 0: []}
    planned = PROCESSORS
    try:
        for _ in range(rounds):
            for processors in times:  # 0: the plan's one program per row
                PROCESSORS = processors
                with cuda_code_path([]), backends_forced("triton"):
                    times[processors].append(_median_us("loss(x, y, k=k).backward()", env, seconds))
    finally:
        PROCESSORS = planned
    split, single = (sorted(t)[rounds // 2] for t in times.values())
    splits = triton_backend._segment(classes, triton_backend.block_size(classes, k), 4)[1]
    return {"shape": SPLIT_SHAPE, "splits": splits, "split_us": split, "one_program_us": single,
            "extra_us": split - single}  # fmt: skip


def measure(batch, classes, k) -> dict:
    """Kernels per forward+backward at a configuration's shape, ours on the CUDA path and
    cross-entropy, and the self-check's one-time cost there."""
    x, y = _inputs(batch, classes)
    with backends_forced("triton"):
        our_ops, our_launches = _kernels(lambda: smooth_topk_svm_loss(x, y, k=k).backward())
    ce_ops, _ = _kernels(lambda: F.cross_entropy(x, y).backward())
    return {
        "config": {"batch": batch, "classes": classes, "k": k},
        "kernels": {
            "smooth_topk": len(our_ops) + len(our_launches),
            "cross_entropy": len(ce_ops),
            "smooth_topk_aten": our_ops,
            "smooth_topk_triton": our_launches,
            "cross_entropy_aten": ce_ops,
        },
        "self_check": self_check_cost(x, y, k),
    }


@contextlib.contextmanager
def backends_forced(name):
    previous = backends.os.environ.get(backends.ENV)
    backends.os.environ[backends.ENV] = name
    try:
        yield
    finally:
        if previous is None:
            backends.os.environ.pop(backends.ENV)
        else:
            backends.os.environ[backends.ENV] = previous


def self_check_cost(x, y, k) -> dict:
    """Extra host µs and kernels of ``auto``'s first call of a kind (the probe on 8 rows by the
    kernel and by the PyTorch path, one host read), over a checked call."""
    call = (y, None, -100, 1.0, 1.0, "mean")
    times, steady = [], []
    with cuda_code_path([]), backends_forced("auto"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stubbed launches disagree: the work is the same
        for _ in range(20):
            triton_backend._CHECKED.clear()
            for into in (times, steady):  # the first call checks, the second does not
                start = time.perf_counter()
                backends.select(x, k, call)
                into.append((time.perf_counter() - start) * 1e6)
        triton_backend._CHECKED.clear()
        ops, launches = _kernels(lambda: backends.select(x, k, call))
    extra = sorted(a - b for a, b in zip(times, steady, strict=True))[len(times) // 2]
    return {"first_call_extra_us": extra, "kernels": len(ops) + len(launches)}


def markdown(hosts: list[dict], results: list[dict], machine: str, split=None) -> str:
    lines = [
        f"Host side of the CUDA code path (launches stubbed; {machine}).",
        "",
        f"Host time of one forward+backward (at {HOST_SHAPE[0]} x {HOST_SHAPE[1]}, median of "
        "interleaved rounds):",
        "",
        "| k | ours µs | `F.cross_entropy` µs | ratio |",
        "|---|---|---|---|",
    ]
    for h in hosts:
        lines.append(
            f"| {h['k']} | {h['smooth_topk']:.0f} | {h['cross_entropy']:.0f} | {h['ratio']:.2f}× |"
        )
    if split is not None:
        lines += [
            "",
            f"Split rows ({split['splits']} programs per row, at {split['shape'][0]} x "
            f"{split['shape'][1]}, k = {split['shape'][2]}): {split['split_us']:.0f} µs against "
            f"{split['one_program_us']:.0f} µs with one program per row, **{split['extra_us']:+.0f}"
            " µs** per forward+backward.",
        ]
    lines += [
        "",
        "Kernels per forward+backward, and the GPU self-check's one-time cost per kind of call:",
        "",
        "| batch | n | k | kernels ours | kernels CE | self-check once: extra µs, kernels |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        c, n, s = r["config"], r["kernels"], r["self_check"]
        lines.append(
            f"| {c['batch']} | {c['classes']} | {c['k']} | {n['smooth_topk']} | "
            f"{n['cross_entropy']} | {s['first_call_extra_us']:.0f}, {s['kernels']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument("--seconds", type=float, default=0.3, help="per timed block")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from smoothtopk.experiments.records import machine, machine_label

    hosts = [host_time(k, seconds=args.seconds) for k in sorted({k for *_, k in CONFIGS})]
    split = split_rows_cost(seconds=args.seconds)
    results = [measure(b, n, k) for b, n, k in CONFIGS]
    args.out.mkdir(parents=True, exist_ok=True)
    label = machine_label(machine())
    document = {"machine": label, "host": hosts, "split_rows": split, "results": results}
    (args.out / "results.json").write_text(json.dumps(document, indent=2))
    (args.out / "results.md").write_text(markdown(hosts, results, label, split))
    print(markdown(hosts, results, label, split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
