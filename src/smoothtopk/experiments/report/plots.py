"""The report's plots (PNG bytes): test accuracy against the report's axis, the training
curves of every run, test top-k against k (the k study) and training accuracy against epochs
per loss (#22: do the non-smooth losses fit the training data?)."""

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
    return _finish(plt, fig, panels)


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


def _figure(rows: int, columns: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
    return plt, fig, panels


def _finish(plt, fig, panels) -> bytes:
    """One legend beside the panels (many curves hide no data), then the PNG."""
    handles, labels = panels[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def plot_topk(rows: list[dict]) -> bytes:
    """Test top-k accuracy against the evaluation k (:func:`.aggregate.topk_rows`): one column
    per (data set, noise, subset), a row at the final epoch and one at the best validation
    top-k epoch, one curve per training loss (its colour and marker: :func:`style`)."""
    settings = list(dict.fromkeys((r["dataset"], r["noise"], r["subset"]) for r in rows))
    losses = list(dict.fromkeys(r["loss"] for r in sorted(rows, key=lambda r: r["order"])))
    plt, fig, panels = _figure(2, len(settings))
    for col, (dataset, noise, subset) in enumerate(settings):
        for line, (key, when) in enumerate((("final", "final epoch"),
                                            ("best", "best validation top-k epoch"))):  # fmt: skip
            panel = panels[line][col]
            for r in rows:
                if (r["dataset"], r["noise"], r["subset"]) != (dataset, noise, subset):
                    continue
                ks = sorted(r[key])
                errors = [r[key][k][1] for k in ks] if r["n"] > 1 else None
                panel.errorbar(ks, [r[key][k][0] for k in ks], yerr=errors, capsize=2,
                               label=r["loss"],
                               **style(losses.index(r["loss"]), len(losses)))  # fmt: skip
            where = f"{dataset}, noise {noise:g}" + (
                f", subset {subset}" if subset != "all" else ""
            )
            panel.set_title(f"{where}\ntest top-k at the {when}", fontsize=9)
            panel.set_xlabel("evaluation k")
            panel.set_ylabel("test top-k accuracy (%)")
            panel.set_xticks(range(1, 11))
            panel.grid(alpha=0.3)
    return _finish(plt, fig, panels)


def plot_training_accuracy(axis: str, rows: list[dict]) -> bytes:
    """Training top-1 and top-5 (on the labels trained on) against the epoch
    (:func:`.aggregate.training_rows`): one column per (data set, axis value), one curve per
    loss, mean over seeds (its colour and marker: :func:`style`)."""
    settings = list(dict.fromkeys((r["dataset"], r[axis]) for r in rows))
    losses = list(dict.fromkeys(r["loss"] for r in sorted(rows, key=lambda r: r["order"])))
    plt, fig, panels = _figure(2, len(settings))
    from matplotlib.ticker import MaxNLocator

    for col, (dataset, x) in enumerate(settings):
        mine = [r for r in rows if (r["dataset"], r[axis]) == (dataset, x)]
        for line, metric in enumerate(("train_top1", "train_top5")):
            panel = panels[line][col]
            for r in mine:
                panel.plot(r["epochs"], r[metric], label=r["loss"], markersize=4,
                           **style(losses.index(r["loss"]), len(losses)))  # fmt: skip
            seeds = "/".join(sorted({str(r["n"]) for r in mine}))
            panel.set_title(f"{dataset}, {AXES[axis].title} = {AXES[axis].text(x)}\ntraining "
                            f"top-{metric[-1]} (mean of {seeds} seed(s))", fontsize=9)  # fmt: skip
            panel.set_xlabel("epoch")
            panel.xaxis.set_major_locator(MaxNLocator(integer=True))
            panel.set_ylabel(f"training top-{metric[-1]} accuracy (%)")
            panel.grid(alpha=0.3)
    return _finish(plt, fig, panels)
