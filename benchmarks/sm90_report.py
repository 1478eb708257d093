"""The sm_90 compile report of the Triton kernels, without a GPU (issue #20, item 3).

    python -m benchmarks.sm90_report --out benchmarks/results/sm90          # ~5 min on 2 cores
    python -m benchmarks.sm90_report --out /tmp/sm90 --k 5 --dtype bfloat16  # a subset

Compiles every ``triton.jit`` kernel of :mod:`smoothtopk.backends.triton_jit` ahead of time
for ``GPUTarget("cuda", 90, 32)`` (an H100/H200), through ``triton.compile`` and an
``ASTSource``, with the constexprs and the argument specialisation (16-divisible pointers and
integers, as Triton's launcher marks them) that the launcher (:mod:`smoothtopk.backends.
triton`) gives it for the benchmark shapes: batch 256 at n = 1000 and 10^4, batch 8 at
n = 10^6, on a 132-multiprocessor H200 (``plan_splits``, ``block_size``, ``_segment`` are the
launcher's own). Kernels whose compile is the same for several shapes are compiled once.

Per kernel and k: registers per thread and spilled bytes (``cuobjdump --dump-resource-usage``
on the cubin, ``REG`` and ``STACK + LOCAL``: ``n_regs`` / ``n_spills`` of a compiled kernel
exist only once it is loaded on a GPU), shared memory (Triton's metadata), ``num_warps``, the
theoretical occupancy on an sm_90 multiprocessor (:func:`occupancy`) and the wall time of the
compile, measured with an empty Triton cache (a fresh ``TRITON_CACHE_DIR``), after one
untimed compile that pays Triton's one-time start-up. Writes ``OUT/report.json`` and
``OUT/report.md`` with the machine and the torch/Triton versions; ``benchmarks.gpu_plan``
derives the GPU check's time budgets from ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

#: an sm_90 multiprocessor (H100/H200): registers, shared memory, warps, blocks
SM90 = dict(registers=65536, shared=228 * 1024, warps=64, blocks=32, max_block_shared=227 * 1024)
#: registers are given out per warp in units of 256 (CUDA occupancy calculator, sm_90)
REGISTER_UNIT = 256
#: shared memory the runtime reserves per block on sm_80 and later
RESERVED_SHARED = 1024
#: the H200's multiprocessors (132, as the H100 SXM), for the launcher's ``plan_splits``
H200_SMS = 132
#: the benchmark shapes (``benchmarks.run.default_batch``): (batch, classes)
SHAPES = ((256, 1000), (256, 10_000), (8, 1_000_000))
KS = (1, 5, 20, 32)
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
REDUCTION_MEAN = 2  # the benchmark's reduction

#: pointer and integer arguments of the kernels (the scores' type is filled in per dtype)
ARGUMENTS = dict(
    s_ptr="*S", target_ptr="*i64", weight_ptr="*S", alpha_ptr="*S", stats_ptr="*fp64",
    work_ptr="*fp64", n="i32", ignore_index="i32", tau="fp64", alpha="fp64", scale="fp64",
    reduction="i32", sums="i32", grad_ptr="*fp32", out_ptr="*S", seg="i32", splits="i32",
)  # fmt: skip


def occupancy(registers: int, shared: int, warps: int, sm: dict = SM90) -> dict:
    """Blocks and warps per multiprocessor, each limit and the one that binds.

    Registers: ``ceil(32 registers / 256) 256`` per warp, a block's warps together; shared
    memory: the block's plus 1 KiB reserved; then at most 64 warps and 32 blocks.

    Example:
        >>> occupancy(168, 0, 4)["blocks"], occupancy(168, 0, 4)["limit"]
        (3, 'registers')
        >>> occupancy(32, 0, 4)["warps_per_sm"], occupancy(32, 0, 4)["occupancy"]
        (64, 1.0)
    """
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    limits = {
        "registers": sm["registers"] // (per_warp * warps),
        "shared": sm["shared"] // (shared + RESERVED_SHARED),
        "warps": sm["warps"] // warps,
        "blocks": sm["blocks"],
    }
    blocks = min(limits.values())
    limit = min(limits, key=lambda name: (limits[name], name != "registers"))
    return {"blocks": blocks, "warps_per_sm": blocks * warps, "limits": limits, "limit": limit,
            "occupancy": blocks * warps / sm["warps"]}  # fmt: skip


def _launcher():
    from smoothtopk.backends import triton as launcher

    return launcher


def _kernels():
    from smoothtopk.backends import triton_jit

    return triton_jit


def splits_for(batch: int, classes: int, k: int, sms: int = H200_SMS) -> int:
    """Programs per row that the launcher plans on a GPU of ``sms`` multiprocessors."""
    launcher = _launcher()
    import torch

    fake = types.SimpleNamespace(shape=(batch, classes), device=torch.device("cuda", 0))
    saved = dict(launcher._PROCESSORS)
    launcher._PROCESSORS[0] = sms
    try:
        wanted = launcher.plan_splits(fake, k)
    finally:
        launcher._PROCESSORS.clear()
        launcher._PROCESSORS.update(saved)
    return launcher._segment(classes, launcher.block_size(classes, k), wanted)[1]


def launches(batch: int, classes: int, k: int) -> list[dict]:
    """The kernels one forward+backward launches at this shape (mirrors ``_launch_forward``
    and ``_launch_backward``): name, constexprs and the integer arguments' values."""
    launcher = _launcher()
    block, kp = launcher.block_size(classes, k), launcher._padded_k(k)
    seg, splits = launcher._segment(classes, block, splits_for(batch, classes, k))
    log = block.bit_length() - 1
    flags = dict(HAS_WEIGHT=False, HAS_ALPHA=False, K=k, KP=kp)
    ints = dict(n=classes, ignore_index=-100, seg=seg, splits=splits, reduction=REDUCTION_MEAN,
                sums=int(batch <= launcher.KERNEL_SUM_ROWS))  # fmt: skip
    wide = dict(WIDE=launcher.wide(k, 1.0))  # tau = 1: the float32 exponential
    backward = dict(K=k, KP=kp, REDUCTION=REDUCTION_MEAN, BLOCK=block, **wide)
    asserting = launcher.ASSERTING  # the launch options of the kernels that read targets
    if splits == 1:
        items = [
            dict(kernel="forward_row_kernel", constexprs=dict(flags, BLOCK=block, LOG=log, **wide),
                 options=asserting),
            dict(kernel="backward_kernel", constexprs=backward),
        ]  # fmt: skip
        return [dict(item, ints=ints, splits=1) for item in items]
    sp, candidates = launcher._pow2(splits), launcher._pow2(splits * kp)
    items = [
        dict(kernel="top_segment_kernel", constexprs=dict(K=k, KP=kp, BLOCK=block)),
        dict(kernel="select_kernel", constexprs=dict(K=k, KP=kp, CANDIDATES=candidates)),
        dict(kernel="rest_segment_kernel", constexprs=dict(K=k, KP=kp, BLOCK=block, LOG=log,
                                                          **wide)),
        dict(kernel="finish_kernel", constexprs=dict(flags, SP=sp, LOG=sp.bit_length() - 1),
             options=asserting),
        dict(kernel="backward_kernel", constexprs=backward),
    ]  # fmt: skip
    return [dict(item, ints=ints, splits=splits) for item in items]


def _source(kernel: str, constexprs: dict, ints: dict, scores: str):
    """The ``ASTSource`` Triton's launcher would build: every pointer 16-aligned (torch's
    allocations are), an integer marked divisible by 16 where it is."""
    import triton

    fn = getattr(_kernels(), kernel)
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        kind = ARGUMENTS[name].replace("S", scores)
        signature[name] = kind
        if kind.startswith("*") or (kind == "i32" and ints[name] % 16 == 0):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def _resources(cubin: bytes) -> dict:
    """``REG``, ``STACK``, ``LOCAL``, ``SHARED`` of a cubin, by Triton's bundled cuobjdump."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run(
            [str(tool), "--dump-resource-usage", handle.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    fields = dict(item.split(":", 1) for item in text.split() if ":" in item and item[0].isupper())
    return {name: int(fields.get(name, "0")) for name in ("REG", "STACK", "LOCAL", "SHARED")}


def compile_one(kernel: str, constexprs: dict, ints: dict, scores: str, options=None) -> dict:
    """Compile for sm_90 with the launch's ``options`` and read its resources; ``compile_s`` is
    the wall time."""
    import triton
    from triton.backends.compiler import GPUTarget

    source = _source(kernel, constexprs, ints, scores)
    start = time.perf_counter()
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options or {})
    seconds = time.perf_counter() - start
    used = _resources(compiled.asm["cubin"])
    meta = compiled.metadata
    shared = max(int(meta.shared), used["SHARED"])
    result = {
        "registers": used["REG"],
        "spilled_bytes": used["STACK"] + used["LOCAL"],
        "shared_bytes": shared,
        "num_warps": int(meta.num_warps),
        "num_stages": int(meta.num_stages),
        "compile_s": round(seconds, 3),
    }
    result["occupancy"] = occupancy(result["registers"], shared, result["num_warps"])
    return result


def _warm_up() -> float:
    """One untimed compile of a trivial kernel: Triton's imports, LLVM and ptxas start-up."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    @triton.jit
    def _copy(x_ptr, y_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs))

    source = triton.compiler.ASTSource(
        fn=_copy, signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "BLOCK": "constexpr"},
        constexprs={"BLOCK": 128},
    )  # fmt: skip
    start = time.perf_counter()
    triton.compile(source, target=GPUTarget("cuda", 90, 32))
    return time.perf_counter() - start


def plan(ks=KS, shapes=SHAPES, dtypes=("float32",)) -> list[dict]:
    """Distinct compiles (kernel, dtype, constexprs, 16-divisible integers), each with the
    shapes that launch it, in launch order."""
    compiles: dict[str, dict] = {}
    for dtype in dtypes:
        for k in ks:
            for batch, classes in shapes:
                for item in launches(batch, classes, k):
                    names = getattr(_kernels(), item["kernel"]).arg_names
                    ints = {n: v for n, v in item["ints"].items() if n in names}
                    divisible = sorted(n for n, v in ints.items() if v % 16 == 0)
                    key = json.dumps([item["kernel"], dtype, item["constexprs"], divisible])
                    entry = compiles.setdefault(key, dict(
                        kernel=item["kernel"], dtype=dtype, k=k, constexprs=item["constexprs"],
                        options=item.get("options", {}), ints=ints, divisible_ints=divisible,
                        shapes=[],
                    ))  # fmt: skip
                    entry["shapes"].append(f"B={batch} n={classes} splits={item['splits']}")
    return list(compiles.values())


def environment() -> dict:
    import torch
    import triton

    from smoothtopk.experiments.records import cpu_model

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "target": "cuda sm_90, warp 32",
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip() or None  # fmt: skip
    except OSError:
        return None


def _short(constexprs: dict) -> str:
    names = ("BLOCK", "CANDIDATES", "SP")
    return " ".join(f"{n}={int(constexprs[n])}" for n in names if n in constexprs)


def markdown(document: dict) -> str:
    env = document["environment"]
    lines = [
        f'sm_90 compile report (`triton.compile` for `GPUTarget("cuda", 90, 32)`, no GPU): '
        f"Triton {env['triton']}, torch {env['torch']}, Python {env['python']}, "
        f"{env['cpu_model']} ({env['cpu_count']} CPUs, load {env['load_average'][0]:.1f}), "
        f"commit {env['commit']}, {env['date']}. Start-up compile (untimed below): "
        f"{document['startup_s']:.1f} s. Occupancy per multiprocessor: 65536 registers, "
        "228 KiB shared memory, 64 warps, 32 blocks.",
        "",
        "| kernel | dtype | k | constexprs | used at | regs | spilled B | shared B | warps | "
        "blocks/SM (limit) | warps/SM | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in document["compiles"]:
        o = c["occupancy"]
        used = "; ".join(c["shapes"])
        lines.append(
            f"| `{c['kernel']}` | {c['dtype']} | {c['k']} | {_short(c['constexprs'])} | {used} | "
            f"{c['registers']} | {c['spilled_bytes']} | {c['shared_bytes']} | {c['num_warps']} | "
            f"{o['blocks']} ({o['limit']}) | {o['warps_per_sm']} | {c['compile_s']:.1f} |"
        )
    total = sum(c["compile_s"] for c in document["compiles"])
    lines += ["", f"{len(document['compiles'])} compiles, {total:.0f} s in all (one process)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the report")
    parser.add_argument("--k", default=",".join(map(str, KS)), help="comma list of k")
    parser.add_argument("--dtype", default="float32", help="comma list: " + ",".join(DTYPES))
    parser.add_argument("--kernels", default=None, help="comma list of kernel names (all)")
    args = parser.parse_args(argv)
    # An empty cache: every compile is a compile (set before Triton reads its knobs).
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="sm90-report-cache-")
    ks = [int(v) for v in args.k.split(",") if v]
    dtypes = [d for d in args.dtype.split(",") if d]
    compiles = plan(ks, SHAPES, dtypes)
    if args.kernels:
        wanted = set(args.kernels.split(","))
        compiles = [c for c in compiles if c["kernel"] in wanted]
    document = {"environment": environment(), "sm90": SM90, "startup_s": round(_warm_up(), 3)}
    args.out.mkdir(parents=True, exist_ok=True)
    document["compiles"] = []
    for index, entry in enumerate(compiles, 1):
        result = compile_one(entry["kernel"], entry["constexprs"], entry["ints"],
                             DTYPES[entry["dtype"]], entry["options"])  # fmt: skip
        document["compiles"].append({**entry, **result})
        print(
            f"[{index}/{len(compiles)}] {entry['kernel']} {entry['dtype']} k={entry['k']} "
            f"{_short(entry['constexprs'])}: {result['registers']} regs, "
            f"{result['spilled_bytes']} B spilled, {result['shared_bytes']} B shared, "
            f"{result['occupancy']['blocks']} blocks/SM, {result['compile_s']:.1f} s",
            flush=True,
        )
        (args.out / "report.json").write_text(json.dumps(document, indent=1))  # as they come
    (args.out / "report.md").write_text(markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
