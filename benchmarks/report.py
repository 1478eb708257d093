"""Benchmark results (JSON from ``benchmarks.run``) -> markdown tables and a log-log plot.

python -m benchmarks.report benchmarks/results/results.json [--md OUT.md] [--png OUT.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.contenders import BASELINE, description

OPS = (
    ("forward_backward", "forward+backward"),
    ("forward", "forward"),
    ("backward", "backward"),
)
OURS = "smooth_topk"
GIB = 1024**3
MIB = 1024**2

# CPU, batch 256: (n, k, max ratio) of forward+backward time to F.cross_entropy; memory <= 2x.
TIME_TARGETS = ((1000, 5, 3.0), (10000, 5, 3.0), (1000, 20, 5.0), (1000, 1, 1.5), (10000, 1, 1.5))
MEMORY_TARGET = 2.0
LARGE_TARGETS = ((100_000, 64), (1_000_000, 8))  # (n, batch): forward+backward within 24 GiB
LARGE_LIMIT = 24 * GIB
# CPU per-call overhead (issue #10, item 3), the paper's CIFAR shape: batch 64, 100 classes.
OVERHEAD_TARGETS = ((100, 1, 1.5), (100, 5, 1.5))  # (n, k, max ratio), batch 64
# CUDA (issue #10), any batch of the grid: forward+backward time to eager F.cross_entropy,
# extra peak memory <= cross-entropy's, and n = 10^6 at batch 8 runs.
CUDA_MEMORY_TARGET = 1.0
CUDA_RUNS = (1_000_000, 8)


def cuda_time_limit(n: int, k: int) -> float | None:
    """Issue #10's bound on forward+backward time / eager CE on a GPU (None: no target)."""
    if k == 1:
        return 1.0
    if k == 5:
        return 1.0 if n >= 10_000 else (1.5 if n == 1000 else None)
    if k == 20:
        return 2.5
    return None


def config_label(cfg: dict) -> str:
    return (
        f"n={cfg['n']} k={cfg['k']} batch={cfg['batch']} {cfg['dtype']} "
        f"{cfg['threads']}T {cfg['device']}"
    )


def _short(err: str, width: int = 70) -> str:
    err = err.replace("|", "/").replace("\n", " ")
    return err if len(err) <= width else err[: width - 1] + "…"


def _failed(res: dict) -> str | None:
    if "skipped" in res:
        return f"skipped: {_short(res['skipped'])}"
    if "error" in res:
        return f"error: {_short(res['error'])}"
    return None


def _ratio_cell(stat: dict | None) -> str:
    if stat is None:
        return "–"
    if _failed(stat):
        return _failed(stat)
    if "ratio" not in stat:
        return "–"
    spread = stat.get("ratio_iqr")
    return f"{stat['ratio']:.2f}×" + (f" ({spread:.2f})" if spread is not None else "")


def _cell(res: dict, op: str) -> str:
    if op == "memory":
        mem = res.get("memory")
        if mem is None:
            return _failed(res) or "–"
        if "error" in mem:
            return f"error: {_short(mem['error'])}"
        if "ratio" not in mem:
            return f"{mem['extra_bytes'] / MIB:.1f} MiB"
        return f"{mem['ratio']:.2f}×"
    stat = res.get(op)
    if stat is None:
        return _failed(res) or "–"
    return _ratio_cell(stat)


def _groups(results: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for entry in results:
        c = entry["config"]
        groups.setdefault((c["device"], c["dtype"], c["threads"]), []).append(entry)
    for entries in groups.values():
        entries.sort(key=lambda e: (e["config"]["k"], e["config"]["n"]))
    return groups


def _contenders(doc: dict) -> list[str]:
    names = list(doc.get("metadata", {}).get("contenders") or [])
    for entry in doc["results"]:
        for name in entry["contenders"]:
            if name not in names:
                names.append(name)
    return names


def _baseline_abs(entry: dict, op: str) -> str:
    base = entry["contenders"].get(BASELINE, {})
    if op == "memory":
        mem = base.get("memory", {})
        return f"{mem['extra_bytes'] / MIB:.2f} MiB" if "extra_bytes" in mem else "error"
    stat = base.get(op, {})
    return f"{stat['median_s'] * 1e3:.3f} ms" if "median_s" in stat else "error"


def _table(entries: list[dict], names: list[str], op: str) -> list[str]:
    others = [n for n in names if n != BASELINE]
    head = ["n", "k", "batch", f"{BASELINE} ({'extra peak' if op == 'memory' else 'median'})"]
    lines = [
        "| " + " | ".join(head + [f"`{n}`" for n in others]) + " |",
        "|" + "---|" * (len(head) + len(others)),
    ]
    for e in entries:
        c = e["config"]
        cells = [str(c["n"]), str(c["k"]), str(c["batch"]), _baseline_abs(e, op)]
        cells += [_cell(e["contenders"][n], op) if n in e["contenders"] else "–" for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _limits(c: dict) -> list[tuple[str, float | None]]:
    """The targets of one configuration: ``(quantity, limit)``, quantity one of ``time``,
    ``memory`` (ratios to cross-entropy), ``large`` (bytes) and ``runs``."""
    n, k, batch = c["n"], c["k"], c["batch"]
    if c["device"].startswith("cuda"):
        limit = cuda_time_limit(n, k)
        out = [("time", limit)] if limit is not None else []
        out.append(("memory", CUDA_MEMORY_TARGET))
        return out + ([("runs", None)] if (n, batch) == CUDA_RUNS else [])
    out = []
    for tn, tk, limit in TIME_TARGETS:
        if (n, k, batch) == (tn, tk, 256):
            out += [("time", limit), ("memory", MEMORY_TARGET)]
    out += [("time", lim) for tn, tk, lim in OVERHEAD_TARGETS if (n, k, batch) == (tn, tk, 64)]
    return out + ([("large", LARGE_LIMIT)] if (n, batch) in LARGE_TARGETS else [])


def _ran(ours: dict) -> str:
    """What one forward+backward of ours measured: time, ratio, extra memory, or why not."""
    stat, mem = ours.get("forward_backward") or {}, ours.get("memory") or {}
    if "median_s" not in stat:
        return f"failed: {_short(stat.get('error') or _failed(ours) or 'not measured')}"
    text = f"{stat['median_s'] * 1e3:.2f} ms"
    if stat.get("ratio") is not None:
        text += f" ({stat['ratio']:.2f}× CE)"
    if "extra_bytes" in mem:
        text += f", extra {mem['extra_bytes'] / MIB:.0f} MiB"
    return text


def _target_row(quantity: str, limit, ours: dict) -> dict:
    if quantity in ("time", "memory"):
        stat = (ours.get("forward_backward") if quantity == "time" else ours.get("memory")) or {}
        got = stat.get("ratio")
        fail = stat.get("error") or _failed(ours) or "not measured"
        what = "forward+backward time" if quantity == "time" else "extra peak memory"
        return {
            "what": f"{what} / CE",
            "target": f"≤ {limit:g}×",
            "measured": f"{got:.2f}×" if got is not None else f"error: {_short(fail)}",
            "met": got is not None and got <= limit,
        }
    ran = "median_s" in (ours.get("forward_backward") or {})
    extra = (ours.get("memory") or {}).get("extra_bytes")
    large = quantity == "large"
    return {
        "what": "forward+backward runs" + (", extra peak memory" if large else ""),
        "target": f"≤ {limit / GIB:g} GiB" if large else "runs",
        "measured": _ran(ours),
        "met": ran and (not large or (extra is not None and extra <= limit)),
    }


def targets(doc: dict) -> list[dict]:
    """The kernel's targets, checked on what was measured (only configurations present)."""
    rows = []
    for entry in doc["results"]:
        c = entry["config"]
        ours = entry["contenders"].get(OURS)
        if ours is None:
            continue
        where = f"{c['device']} {c['dtype']} {c['threads']}T n={c['n']} k={c['k']} b={c['batch']}"
        for quantity, limit in _limits(c):
            rows.append({"where": where, **_target_row(quantity, limit, ours)})
    return rows


def markdown(doc: dict, title: str | None = None) -> str:
    meta = doc.get("metadata", {})
    env = meta.get("environment", {})
    names = _contenders(doc)
    out = [f"# {title or 'smoothtopk benchmarks'}", ""]
    out += [
        f"- suite: {meta.get('suite', '?')}, `{meta.get('command', '')}`",
        f"- started {meta.get('started', '?')}, took {meta.get('seconds', '?')} s, "
        f"commit {meta.get('git_commit', '?')}",
        f"- CPU: {meta.get('cpu_model', '?')}, {meta.get('cpu_count', '?')} logical CPUs"
        + (f"; GPU: {env['gpu']} (CUDA {env.get('cuda')})" if env.get("gpu") else ""),
        f"- torch {env.get('torch', '?')}, Python {env.get('python', '?')}, "
        f"{env.get('platform', '?')}",
        f"- timing: `torch.utils.benchmark` `blocked_autorange`, {meta.get('rounds', '?')} "
        f"interleaved rounds of {meta.get('min_run_time_s', '?')} s per contender and operation",
        "",
        "Cells: median time of the contender / median time of `F.cross_entropy` in the same "
        "process, median over rounds of the per-round ratio, (IQR of the per-round ratios). "
        "Memory: extra peak memory of one forward+backward / that of `F.cross_entropy`.",
        "",
    ]
    rows = targets(doc)
    if rows:
        out += ["## Targets (ours: `smooth_topk`)", ""]
        out += ["| configuration | quantity | target | measured | met |", "|---|---|---|---|---|"]
        for r in rows:
            met = "yes" if r["met"] else "**no**"
            out.append(f"| {r['where']} | {r['what']} | {r['target']} | {r['measured']} | {met} |")
        out.append("")
    for (device, dtype, threads), entries in _groups(doc["results"]).items():
        for op, label in (*OPS, ("memory", "extra peak memory")):
            out += [f"## {label}: {device}, {dtype}, {threads} thread(s)", ""]
            out += _table(entries, names, op)
            out.append("")
    if meta.get("not_run"):
        missing = "; ".join(meta["not_run"])
        out += [f"Not run (`--budget` spent, or the run stopped): {missing}.", ""]
    out += ["## Contenders", ""]
    out += [f"- `{n}`: {description(n)}{_backends(doc, n)}" for n in names]
    out.append("")
    return "\n".join(out)


def _backends(doc: dict, name: str) -> str:
    """The implementations a contender reported (ours: the backend chosen), by device."""
    seen: dict[str, list[str]] = {}
    for entry in doc["results"]:
        backend = entry["contenders"].get(name, {}).get("backend")
        device = entry["config"]["device"]
        if backend and backend not in seen.setdefault(device, []):
            seen[device].append(backend)
    parts = [f"`{'`, `'.join(b)}` on {d}" for d, b in seen.items() if b]
    return f"; backend run: {'; '.join(parts)}" if parts else ""


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(doc["results"])
    names = _contenders(doc)
    ks = sorted({e["config"]["k"] for e in doc["results"]})
    fig, axes = plt.subplots(
        len(groups), len(ks), figsize=(4.2 * len(ks), 3.6 * len(groups)), squeeze=False
    )
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for row, ((device, dtype, threads), entries) in enumerate(groups.items()):
        for col, k in enumerate(ks):
            ax = axes[row][col]
            for name in names:
                pts = []
                for e in entries:
                    stat = e["contenders"].get(name, {}).get("forward_backward") or {}
                    if e["config"]["k"] == k and "median_s" in stat:
                        pts.append((e["config"]["n"], stat["median_s"] * 1e3))
                if pts:
                    pts.sort()
                    xs, ys = zip(*pts, strict=True)
                    style = "--" if name == BASELINE else "-"
                    ax.plot(xs, ys, style, marker="o", ms=3, color=colors[name], label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"k={k}, {device} {dtype}, {threads}T", fontsize=9)
            ax.set_xlabel("n (classes)")
            ax.set_ylabel("forward+backward (ms)")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.tight_layout()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def summary_line(entry: dict) -> str:
    parts = []
    for name, res in entry["contenders"].items():
        if name == BASELINE:
            continue
        stat = res.get("forward_backward") or {}
        if "ratio" in stat:
            mem = (res.get("memory") or {}).get("ratio")
            parts.append(f"{name} {stat['ratio']:.2f}×" + (f"/mem {mem:.2f}×" if mem else ""))
        else:
            parts.append(f"{name} {'skipped' if 'skipped' in res else 'err'}")
    return ", ".join(parts)


def merge(docs: list[dict]) -> dict:
    """One report from several runs: the first run's metadata, every run's command."""
    if len(docs) == 1:
        return docs[0]
    meta = dict(docs[0].get("metadata", {}))
    meta["command"] = "`; `".join(d.get("metadata", {}).get("command", "?") for d in docs)
    meta["suite"] = "+".join(d.get("metadata", {}).get("suite", "?") for d in docs)
    meta["seconds"] = round(sum(d.get("metadata", {}).get("seconds", 0) for d in docs), 1)
    names = []
    for d in docs:
        for n in d.get("metadata", {}).get("contenders", []):
            if n not in names:
                names.append(n)
    meta["contenders"] = names
    meta.pop("not_run", None)
    not_run = [c for d in docs for c in d.get("metadata", {}).get("not_run", [])]
    if not_run:
        meta["not_run"] = not_run
    return {"metadata": meta, "results": [e for d in docs for e in d["results"]]}


def _plot_if_possible(doc: dict, path: Path) -> bool:
    """The plot, unless there is nothing to plot or matplotlib is missing (then say so on
    stderr: the tables are written)."""
    if not doc["results"]:
        print(f"no results: no {path}", file=sys.stderr)
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"matplotlib is not installed: no {path}", file=sys.stderr)
        return False
    plot(doc, path)
    return True


def write(doc: dict, out: Path, title: str | None = None) -> list[Path]:
    """``OUT/results.md`` and (with matplotlib) ``OUT/benchmarks.png``; the paths written."""
    out = Path(out)
    (out / "results.md").write_text(markdown(doc, title))
    png = out / "benchmarks.png"
    return [out / "results.md"] + ([png] if _plot_if_possible(doc, png) else [])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, nargs="+")
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    doc = merge([json.loads(path.read_text()) for path in args.json])
    md = args.md or args.json[0].with_suffix(".md")
    md.write_text(markdown(doc, args.title))
    png = args.png or args.json[0].with_name("benchmarks.png")
    print(f"wrote {md}" + (f", {png}" if _plot_if_possible(doc, png) else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
