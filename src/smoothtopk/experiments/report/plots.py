"""The report's plots (PNG bytes): test accuracy against the report's axis, and the training
curves of every run."""

from __future__ import annotations

import io

from .aggregate import AXES, axis_of
from .load import RunResult


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


#: 20 distinct colours (matplotlib's tab20, dark shades first, then the light ones) and 10
#: markers: line i of a plot gets colour i and marker i, so no two of up to 20 lines share a
#: colour, and no two of up to 10 share a marker either (docs/results_noise.png drew twelve
#: losses with a ten-colour cycle: two shared one)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def style(index: int, total: int) -> dict:
    """The colour and marker of line ``index`` among ``total``: tab10's colours while they
    suffice, else tab20's (dark shades first); one marker each, cycling after ten (where the
    colours still differ); beyond 20 lines the colours repeat with other markers."""
    import matplotlib

    if total <= 10:
        color = matplotlib.colormaps["tab10"](index % 10)
    else:
        color = matplotlib.colormaps["tab20"](((index % 20) * 2) % 20 + (index % 20) // 10)
    return {"color": color, "marker": MARKERS[(index + index // 20) % len(MARKERS)]}


#: the panels of the accuracy plots: (row field, title); the tail panel when rows have it
PANELS = (("test_top1", "top-1"), ("test_top5", "top-5"), ("test_tail_top5", "tail-third top-5"))


def plot_accuracy(axis: str, rows: list[dict]):
    """Test accuracy of ``rows`` (mean ± std over seeds) against ``axis``: one panel per metric
    of :data:`PANELS` the rows have, one line per (data set, loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(m, t) for m, t in PANELS if any(r.get(m) is not None for r in rows)]
    fig, panels = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    lines = list(dict.fromkeys((r["dataset"], r["loss"]) for r in rows))
    several = len({d for d, _ in lines}) > 1  # e.g. imbalance ratios: one line per data set
    ax = AXES[axis]
    values = sorted({r[axis] for r in rows}, key=ax.key)
    many = any(r["n"] > 1 for r in rows)
    for panel, (metric, title) in zip(panels[0], shown, strict=True):
        for dataset, loss in lines:
            mine = [r for r in rows if r["loss"] == loss and r["dataset"] == dataset
                    and r.get(metric) is not None]  # fmt: skip
            mine.sort(key=lambda r: ax.key(r[axis]))
            xs = [values.index(r[axis]) if ax.categorical else r[axis] for r in mine]
            errors = [r[f"{metric}_std"] for r in mine]
            index = lines.index((dataset, loss))
            panel.errorbar(xs, [r[metric] for r in mine], yerr=errors if any(errors) else None,
                           capsize=3, **style(index, len(lines)),
                           label=f"{loss}, {dataset}" if several else loss)  # fmt: skip
        if ax.categorical:
            panel.set_xticks(range(len(values)), [ax.text(v) for v in values])
        panel.set_xlabel(ax.title)
        panel.set_ylabel(f"test {title} accuracy (%)")
        panel.set_title(f"test {title} at the best validation top-5 epoch"
                        + ("\n(mean ± std over seeds)" if many else ""), fontsize=10)  # fmt: skip
        panel.grid(alpha=0.3)
    # One legend beside the panels, so that many losses hide no data.
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def plot_curves(runs: list[RunResult]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, 3, figsize=(15, 4))
    axis = AXES[axis_of(runs)]
    labels = list(dict.fromkeys(r.label for r in runs))
    styles = ["-", "--", ":", "-."]
    xs = sorted({getattr(r.cfg, axis.name) for r in runs}, key=axis.key)
    cmap = plt.get_cmap("viridis")
    for run in runs:
        if not run.history:
            continue
        x = getattr(run.cfg, axis.name)
        color = cmap(xs.index(x) / max(len(xs) - 1, 1))
        style = styles[labels.index(run.label) % len(styles)]
        epochs = [h["epoch"] for h in run.history]
        name = f"{run.label}, {axis.name} {axis.text(x)}"
        for panel, metric in zip(panels, ("train_loss", "val_top1", "val_top5"), strict=True):
            values = [h[metric] * (1 if metric == "train_loss" else 100) for h in run.history]
            panel.plot(epochs, values, style, color=color, label=name)
    for panel, title in zip(panels, ("training loss (noisy labels)", "validation top-1 (%)",
                                     "validation top-5 (%)"), strict=True):  # fmt: skip
        panel.set_xlabel("epoch")
        panel.set_title(title)
        panel.grid(alpha=0.3)
    panels[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data
