"""Benchmark results (JSON from ``benchmarks.run``) -> markdown tables and a log-log plot.

python -m benchmarks.report benchmarks/results/results.json [--md OUT.md] [--png OUT.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.contenders import BASELINE, DESCRIPTIONS

OPS = (
    ("forward_backward", "forward+backward"),
    ("forward", "forward"),
    ("backward", "backward"),
)
OURS = "smooth_topk"
GIB = 1024**3
MIB = 1024**2

# (n, k, max ratio) of forward+backward time to F.cross_entropy, batch 256; memory <= 2x there.
TIME_TARGETS = ((1000, 5, 3.0), (10000, 5, 3.0), (1000, 20, 5.0), (1000, 1, 1.5), (10000, 1, 1.5))
MEMORY_TARGET = 2.0
LARGE_TARGETS = ((100_000, 64), (1_000_000, 8))  # (n, batch): forward+backward within 24 GiB
LARGE_LIMIT = 24 * GIB


def config_label(cfg: dict) -> str:
    return (
        f"n={cfg['n']} k={cfg['k']} batch={cfg['batch']} {cfg['dtype']} "
        f"{cfg['threads']}T {cfg['device']}"
    )


def _short(err: str, width: int = 70) -> str:
    err = err.replace("|", "/").replace("\n", " ")
    return err if len(err) <= width else err[: width - 1] + "…"


def _ratio_cell(stat: dict | None) -> str:
    if stat is None:
        return "–"
    if "error" in stat:
        return f"error: {_short(stat['error'])}"
    if "ratio" not in stat:
        return "–"
    spread = stat.get("ratio_iqr")
    return f"{stat['ratio']:.2f}×" + (f" ({spread:.2f})" if spread is not None else "")


def _cell(res: dict, op: str) -> str:
    if op == "memory":
        mem = res.get("memory")
        if mem is None:
            return f"error: {_short(res['error'])}" if "error" in res else "–"
        if "error" in mem:
            return f"error: {_short(mem['error'])}"
        if "ratio" not in mem:
            return f"{mem['extra_bytes'] / MIB:.1f} MiB"
        return f"{mem['ratio']:.2f}×"
    stat = res.get(op)
    if stat is None and "error" in res:
        return f"error: {_short(res['error'])}"
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


def targets(doc: dict) -> list[dict]:
    """The kernel's targets, checked on what was measured (only configurations present)."""
    rows = []
    for entry in doc["results"]:
        c = entry["config"]
        ours = entry["contenders"].get(OURS)
        if ours is None:
            continue
        where = f"{c['device']} {c['dtype']} {c['threads']}T n={c['n']} k={c['k']} b={c['batch']}"
        for n, k, limit in TIME_TARGETS:
            if (c["n"], c["k"], c["batch"]) != (n, k, 256):
                continue
            stat = ours.get("forward_backward") or {}
            got = stat.get("ratio")
            err = stat.get("error") or ours.get("error")
            rows.append(
                {
                    "where": where,
                    "what": "forward+backward time / CE",
                    "target": f"≤ {limit:g}×",
                    "measured": f"{got:.2f}×" if got is not None else f"error: {_short(err or '')}",
                    "met": got is not None and got <= limit,
                }
            )
            mem = ours.get("memory") or {}
            got = mem.get("ratio")
            rows.append(
                {
                    "where": where,
                    "what": "extra peak memory / CE",
                    "target": f"≤ {MEMORY_TARGET:g}×",
                    "measured": f"{got:.2f}×"
                    if got is not None
                    else f"error: {_short(mem.get('error') or ours.get('error') or '')}",
                    "met": got is not None and got <= MEMORY_TARGET,
                }
            )
        for n, batch in LARGE_TARGETS:
            if (c["n"], c["batch"]) != (n, batch):
                continue
            mem = ours.get("memory") or {}
            got = mem.get("extra_bytes")
            stat = ours.get("forward_backward") or {}
            ran = "median_s" in stat
            measured = (
                f"extra {got / MIB:.0f} MiB" if got is not None else f"error: {mem.get('error')}"
            )
            if ran:
                ratio = stat.get("ratio")
                measured += f", {stat['median_s'] * 1e3:.1f} ms" + (
                    f" ({ratio:.2f}× CE)" if ratio is not None else ""
                )
            rows.append(
                {
                    "where": where,
                    "what": "forward+backward runs, extra peak memory",
                    "target": "≤ 24 GiB",
                    "measured": measured,
                    "met": ran and got is not None and got <= LARGE_LIMIT,
                }
            )
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
    out += ["## Contenders", ""]
    out += [f"- `{n}`: {DESCRIPTIONS.get(n, n)}" for n in names]
    out.append("")
    return "\n".join(out)


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
            parts.append(f"{name} err")
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
    return {"metadata": meta, "results": [e for d in docs for e in d["results"]]}


def write(doc: dict, out: Path, title: str | None = None) -> None:
    out = Path(out)
    (out / "results.md").write_text(markdown(doc, title))
    plot(doc, out / "benchmarks.png")


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
    plot(doc, args.png or args.json[0].with_name("benchmarks.png"))
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
